// What the oneDNN custom calls (onednn_conv.cc, onednn_matmul.cc) share:
// one CPU engine, a stream per XLA thread, and per-thread buffers kept
// between calls.
#ifndef CNN_JAX_CONV_NATIVE_ONEDNN_RUNTIME_H_
#define CNN_JAX_CONV_NATIVE_ONEDNN_RUNTIME_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>

#include "oneapi/dnnl/dnnl.hpp"

namespace cnn_onednn {

inline dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

inline dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Per-thread buffers, kept between calls: a primitive's scratch memory and
// a copy of its weights in oneDNN's layout. Fresh allocations of megabytes
// each call would page-fault on every step. Each is a mapping of its own,
// outside malloc's heap: a buffer that grows in the middle of a step (a
// thread's first call on a larger layer) would otherwise take a piece of
// the hole that the step before left behind (XLA:CPU's temporaries, freed
// after every call, kept by training/cpu_malloc.py), and the next step's
// temporaries, no longer fitting there, would grow the heap by their whole
// size. Contents do not survive growth: every call writes them first.
class Mapping {
 public:
  ~Mapping() { Release(); }
  void* Reserve(size_t bytes) {
    if (bytes > bytes_) {
      Release();
      void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (data == MAP_FAILED) throw std::bad_alloc();
      data_ = data;
      bytes_ = bytes;
    }
    return data_;
  }

 private:
  void Release() {
    if (data_ != nullptr) munmap(data_, bytes_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

enum Slot { kScratch = 0, kWeights = 1 };
inline void* Buffer(Slot slot, size_t bytes) {
  thread_local Mapping buffers[2];
  return buffers[slot].Reserve(bytes);
}

// A primitive's scratch memory, in this thread's buffer.
inline dnnl::memory Scratchpad(size_t bytes) {
  return dnnl::memory(
      dnnl::memory::desc({static_cast<int64_t>(bytes)},
                         dnnl::memory::data_type::u8,
                         dnnl::memory::format_tag::a),
      Engine(), Buffer(kScratch, bytes));
}

}  // namespace cnn_onednn

#endif  // CNN_JAX_CONV_NATIVE_ONEDNN_RUNTIME_H_

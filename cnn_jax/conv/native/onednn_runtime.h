// What the oneDNN custom calls (onednn_conv.cc, onednn_matmul.cc) share:
// one CPU engine, a stream per XLA thread, and per-thread buffers kept
// between calls.
#ifndef CNN_JAX_CONV_NATIVE_ONEDNN_RUNTIME_H_
#define CNN_JAX_CONV_NATIVE_ONEDNN_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <vector>

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
// each call would page-fault on every step.
enum Slot { kScratch = 0, kWeights = 1 };
inline void* Buffer(Slot slot, size_t bytes) {
  thread_local std::vector<uint8_t> buffers[2];
  std::vector<uint8_t>& buffer = buffers[slot];
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
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

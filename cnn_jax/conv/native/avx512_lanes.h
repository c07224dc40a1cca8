// What the native pooling kernels (max_pool.cc, conv_pool.cc) share: 16
// channels at a time in GCC's vector types (one AVX-512 register each),
// float32 and bfloat16 loads and stores, and the pool's index marker.
//
// The kernels are AVX-512 code (F, BW, VL, DQ: oneDNN's avx512_core).
// Compiled for AVX2 or SSE2 the same source ran 10-15x slower than XLA's
// fusions (GCC splits the 64-byte vectors and their conversions badly), so
// max_pool_native.usable() calls them only where oneDNN dispatches to
// avx512_core or newer, and the handlers check again (HasAvx512).
#ifndef CNN_JAX_CONV_NATIVE_AVX512_LANES_H_
#define CNN_JAX_CONV_NATIVE_AVX512_LANES_H_

#include <cstdint>
#include <cstring>

namespace cnn_native {

constexpr int64_t kLanes = 16;
// The index of a window that passes no gradient: one the ReLU after a
// biased pool zeroes (max_pool_native.NO_GRADIENT). A plain pool's windows
// hold at most 254 elements, so no element has this index.
constexpr uint8_t kNoGradient = 255;

typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef uint16_t H16 __attribute__((vector_size(32)));
typedef int16_t S16 __attribute__((vector_size(32)));
typedef uint8_t B16 __attribute__((vector_size(16)));

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

template <typename V, typename T>
inline V LoadVector(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void StoreVector(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// float32 <-> the kernels' float vectors; bfloat16 is float32's top half.
inline F16 Widen(const float* p) { return LoadVector<F16>(p); }
inline F16 Widen(const uint16_t* p) {
  U16 u = __builtin_convertvector(LoadVector<H16>(p), U16) << 16;
  return reinterpret_cast<F16&>(u);
}
// For values exact in the destination (a pool's inputs, or NaNs).
inline void Narrow(F16 v, float* p) { StoreVector(p, v); }
inline void Narrow(F16 v, uint16_t* p) {
  StoreVector(p, __builtin_convertvector(reinterpret_cast<U16&>(v) >> 16, H16));
}
// Rounded to nearest even, as XLA's convert: a NaN stays a (quiet) NaN.
inline void NarrowRounded(F16 v, float* p) { StoreVector(p, v); }
inline void NarrowRounded(F16 v, uint16_t* p) {
  const U16 u = reinterpret_cast<U16&>(v);
  const U16 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const U16 out = v != v ? (u >> 16) | 0x40u : rounded;
  StoreVector(p, __builtin_convertvector(out, H16));
}

// The same for one element (the channels after the last 16).
inline float WidenOne(float v) { return v; }
inline float WidenOne(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void NarrowOne(float v, float* p) { *p = v; }
inline void NarrowOne(float v, uint16_t* p) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  *p = static_cast<uint16_t>(u >> 16);
}
inline void NarrowRoundedOne(float v, float* p) { *p = v; }
inline void NarrowRoundedOne(float v, uint16_t* p) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  *p = static_cast<uint16_t>(
      v != v ? (u >> 16) | 0x40u : (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#pragma GCC pop_options

inline bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
         && __builtin_cpu_supports("avx512vl")
         && __builtin_cpu_supports("avx512dq");
}

}  // namespace cnn_native

#endif  // CNN_JAX_CONV_NATIVE_AVX512_LANES_H_

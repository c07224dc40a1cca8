// Max pooling over tiling windows (stride = window, no padding, spatial
// sizes multiples of the window), NHWC, float32 or bfloat16, with the index
// of each window's first maximal element.
#include <cstdint>
#include <cstring>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
namespace {

// The kernels are AVX-512 code (F, BW, VL, DQ: oneDNN's avx512_core):
// 16 channels at a time in GCC's vector types, one register each. Compiled
// for AVX2 or SSE2 the same source ran 10-15x slower than XLA's fusions
// (GCC splits the 64-byte vectors and their conversions badly), so
// max_pool_native.usable() calls them only where oneDNN dispatches to
// avx512_core or newer, and the handlers check again.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

constexpr int64_t kLanes = 16;
typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef uint16_t H16 __attribute__((vector_size(32)));
typedef int16_t S16 __attribute__((vector_size(32)));
typedef uint8_t B16 __attribute__((vector_size(16)));

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
inline void Narrow(F16 v, float* p) { StoreVector(p, v); }
inline void Narrow(F16 v, uint16_t* p) {
  // v holds input elements (or NaNs): exact in bfloat16.
  StoreVector(p, __builtin_convertvector(reinterpret_cast<U16&>(v) >> 16, H16));
}

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

// 16 channels of one window: x points at its first element's channel c,
// `step[k]` is element k's offset from there.
template <typename T>
inline void PoolLanes(const T* x, const int64_t* step, int64_t n, T* y,
                      uint8_t* idx) {
  F16 m = Widen(x);
  for (int64_t k = 1; k < n; ++k) {
    const F16 v = Widen(x + step[k]);
    m = (v > m) | (v != v) ? v : m;  // jnp.maximum's: a NaN wins
  }
  I16 first = I16{} + static_cast<int32_t>(n);  // n: no element equals a NaN
  for (int64_t k = n - 1; k >= 0; --k)
    first = Widen(x + step[k]) == m ? I16{} + static_cast<int32_t>(k) : first;
  Narrow(m, y);
  StoreVector(idx, __builtin_convertvector(first, B16));
}

template <typename T>
inline void PoolOne(const T* x, const int64_t* step, int64_t n, T* y,
                    uint8_t* idx) {
  float m = WidenOne(x[0]);
  for (int64_t k = 1; k < n; ++k) {
    const float v = WidenOne(x[step[k]]);
    m = (v > m) | (v != v) ? v : m;
  }
  int32_t first = static_cast<int32_t>(n);
  for (int64_t k = n - 1; k >= 0; --k)
    first = WidenOne(x[step[k]]) == m ? static_cast<int32_t>(k) : first;
  NarrowOne(m, y);
  *idx = static_cast<uint8_t>(first);
}

// 16 channels of one input element, window position k: g where the index
// is k, else 0.
inline void ScatterLanes(const float* g, const uint8_t* idx, uint8_t k,
                         float* dx) {
  const I16 hit = __builtin_convertvector(
      LoadVector<B16>(idx) == (B16{} + k), I16);
  const I16 bits = LoadVector<I16>(g) & hit;
  StoreVector(dx, bits);
}
inline void ScatterLanes(const uint16_t* g, const uint8_t* idx, uint8_t k,
                         uint16_t* dx) {
  const S16 hit = __builtin_convertvector(
      LoadVector<B16>(idx) == (B16{} + k), S16);
  StoreVector(dx, LoadVector<S16>(g) & hit);
}
template <typename T>
inline void ScatterOne(const T* g, const uint8_t* idx, uint8_t k, T* dx) {
  *dx = *idx == k ? *g : T(0);
}

template <typename T>
void Forward(const T* x, T* y, uint8_t* idx, int64_t B, int64_t H, int64_t W,
             int64_t C, int64_t wh, int64_t ww) {
  const int64_t Ho = H / wh, Wo = W / ww, n = wh * ww;
  int64_t step[256];
  for (int64_t k = 0; k < n; ++k) step[k] = ((k / ww) * W + k % ww) * C;
  const int64_t full = C - C % kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Ho; ++r) {
    const int64_t b = r / Ho, i = r % Ho;
    const T* row = x + (b * H + i * wh) * W * C;
    for (int64_t j = 0; j < Wo; ++j) {
      const T* window = row + j * ww * C;
      const int64_t out = (r * Wo + j) * C;
      int64_t c = 0;
      for (; c < full; c += kLanes)
        PoolLanes(window + c, step, n, y + out + c, idx + out + c);
      for (; c < C; ++c)
        PoolOne(window + c, step, n, y + out + c, idx + out + c);
    }
  }
}

template <typename T>
void Backward(const T* g, const uint8_t* idx, T* dx, int64_t B, int64_t H,
              int64_t W, int64_t C, int64_t wh, int64_t ww) {
  const int64_t Ho = H / wh, Wo = W / ww;
  const int64_t full = C - C % kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Ho; ++r) {
    const int64_t b = r / Ho, i = r % Ho;
    for (int64_t s = 0; s < wh; ++s) {
      T* row = dx + ((b * H + i * wh + s) * W) * C;
      for (int64_t j = 0; j < Wo; ++j) {
        const T* gj = g + (r * Wo + j) * C;
        const uint8_t* ij = idx + (r * Wo + j) * C;
        for (int64_t t = 0; t < ww; ++t) {
          const uint8_t k = static_cast<uint8_t>(s * ww + t);
          T* out = row + (j * ww + t) * C;
          int64_t c = 0;
          for (; c < full; c += kLanes) ScatterLanes(gj + c, ij + c, k, out + c);
          for (; c < C; ++c) ScatterOne(gj + c, ij + c, k, out + c);
        }
      }
    }
  }
}

#pragma GCC pop_options

bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
         && __builtin_cpu_supports("avx512vl")
         && __builtin_cpu_supports("avx512dq");
}

ffi::Error CheckGeometry(ffi::Span<const int64_t> x, int64_t wh, int64_t ww) {
  if (!HasAvx512())
    return ffi::Error::InvalidArgument("max_pool: needs AVX-512 (F, BW, VL, DQ)");
  if (x.size() != 4)
    return ffi::Error::InvalidArgument("max_pool: operand must be [B, H, W, C]");
  if (wh < 1 || ww < 1 || wh * ww > 255 || x[1] < wh || x[2] < ww)
    return ffi::Error::InvalidArgument(
        "max_pool: window must fit the input and hold 1 to 255 elements");
  // max_pool_native.max_pool crops the rows and columns no window covers,
  // so every element of x (and dx) belongs to exactly one window.
  if (x[1] % wh || x[2] % ww)
    return ffi::Error::InvalidArgument(
        "max_pool: spatial sizes must be multiples of the window");
  return ffi::Error::Success();
}

ffi::Error ForwardHandler(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                          ffi::Result<ffi::Buffer<ffi::U8>> idx, int64_t wh,
                          int64_t ww) {
  auto d = x.dimensions();
  if (auto e = CheckGeometry(d, wh, ww); e.failure()) return e;
  if (x.element_type() != y->element_type())
    return ffi::Error::InvalidArgument("max_pool: result dtype differs");
  if (x.element_type() == ffi::DataType::F32) {
    Forward(static_cast<const float*>(x.untyped_data()),
            static_cast<float*>(y->untyped_data()), idx->typed_data(), d[0],
            d[1], d[2], d[3], wh, ww);
  } else if (x.element_type() == ffi::DataType::BF16) {
    Forward(static_cast<const uint16_t*>(x.untyped_data()),
            static_cast<uint16_t*>(y->untyped_data()), idx->typed_data(),
            d[0], d[1], d[2], d[3], wh, ww);
  } else {
    return ffi::Error::InvalidArgument("max_pool: dtype must be f32 or bf16");
  }
  return ffi::Error::Success();
}

ffi::Error BackwardHandler(ffi::AnyBuffer g, ffi::Buffer<ffi::U8> idx,
                           ffi::Result<ffi::AnyBuffer> dx, int64_t wh,
                           int64_t ww) {
  auto d = dx->dimensions();
  if (auto e = CheckGeometry(d, wh, ww); e.failure()) return e;
  if (g.element_type() != dx->element_type())
    return ffi::Error::InvalidArgument("max_pool: result dtype differs");
  if (g.element_type() == ffi::DataType::F32) {
    Backward(static_cast<const float*>(g.untyped_data()), idx.typed_data(),
             static_cast<float*>(dx->untyped_data()), d[0], d[1], d[2], d[3],
             wh, ww);
  } else if (g.element_type() == ffi::DataType::BF16) {
    Backward(static_cast<const uint16_t*>(g.untyped_data()), idx.typed_data(),
             static_cast<uint16_t*>(dx->untyped_data()), d[0], d[1], d[2],
             d[3], wh, ww);
  } else {
    return ffi::Error::InvalidArgument("max_pool: dtype must be f32 or bf16");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnMaxPoolForward, ForwardHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("wh")
                                  .Attr<int64_t>("ww"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnMaxPoolBackward, BackwardHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("wh")
                                  .Attr<int64_t>("ww"));

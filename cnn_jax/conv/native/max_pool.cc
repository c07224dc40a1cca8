// Max pooling over tiling windows (stride = window, no padding, spatial
// sizes multiples of the window), NHWC, float32 or bfloat16, with the index
// of each window's first maximal element; and the same pool followed by a
// per-example, per-channel bias and a ReLU in the same pass (the
// conv -> pool -> bias -> ReLU block of layers.ConvReluMaxPool), whose
// index marks the windows the ReLU zeroes.
#include <cstdint>
#include <cstring>

#include "avx512_lanes.h"
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
namespace {

using namespace cnn_native;  // NOLINT: the kernels' vocabulary

// AVX-512 code: see avx512_lanes.h.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

// 16 channels of one window: x points at its first element's channel c,
// `step[k]` is element k's offset from there. Sets the window's max and
// the index of its first maximal element (n where the max is a NaN: no
// element equals it).
template <typename T>
inline void WindowMaxLanes(const T* x, const int64_t* step, int64_t n, F16* m,
                           I16* first) {
  *m = Widen(x);
  for (int64_t k = 1; k < n; ++k) {
    const F16 v = Widen(x + step[k]);
    *m = (v > *m) | (v != v) ? v : *m;  // jnp.maximum's: a NaN wins
  }
  *first = I16{} + static_cast<int32_t>(n);
  for (int64_t k = n - 1; k >= 0; --k)
    *first = Widen(x + step[k]) == *m ? I16{} + static_cast<int32_t>(k)
                                      : *first;
}

template <typename T>
inline void WindowMaxOne(const T* x, const int64_t* step, int64_t n, float* m,
                         int32_t* first) {
  *m = WidenOne(x[0]);
  for (int64_t k = 1; k < n; ++k) {
    const float v = WidenOne(x[step[k]]);
    *m = (v > *m) | (v != v) ? v : *m;
  }
  *first = static_cast<int32_t>(n);
  for (int64_t k = n - 1; k >= 0; --k)
    *first = WidenOne(x[step[k]]) == *m ? static_cast<int32_t>(k) : *first;
}

// One window's 16 channels pooled: y = max, or with `bias` (16 floats)
// y = relu(max + bias) rounded to T, its index kNoGradient where that is
// not positive (a NaN included: jax.nn.relu's gradient there is 0).
template <typename T>
inline void PoolLanes(const T* x, const int64_t* step, int64_t n,
                      const float* bias, T* y, uint8_t* idx) {
  F16 m;
  I16 first;
  WindowMaxLanes(x, step, n, &m, &first);
  if (bias == nullptr) {
    Narrow(m, y);
  } else {
    const F16 v = m + LoadVector<F16>(bias);
    const I16 live = v > 0;
    NarrowRounded(live | (v != v) ? v : F16{}, y);  // a NaN passes the ReLU
    first = live ? first : I16{} + kNoGradient;
  }
  StoreVector(idx, __builtin_convertvector(first, B16));
}

template <typename T>
inline void PoolOne(const T* x, const int64_t* step, int64_t n,
                    const float* bias, T* y, uint8_t* idx) {
  float m;
  int32_t first;
  WindowMaxOne(x, step, n, &m, &first);
  if (bias == nullptr) {
    NarrowOne(m, y);
  } else {
    const float v = m + *bias;
    NarrowRoundedOne(v > 0 || v != v ? v : 0.0f, y);
    first = v > 0 ? first : kNoGradient;
  }
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

// bias: nullptr, or [B, C] float32 (each example's row: a vmapped sweep's
// members fold into the batch with their own biases).
template <typename T>
void Forward(const T* x, const float* bias, T* y, uint8_t* idx, int64_t B,
             int64_t H, int64_t W, int64_t C, int64_t wh, int64_t ww) {
  const int64_t Ho = H / wh, Wo = W / ww, n = wh * ww;
  int64_t step[256];
  for (int64_t k = 0; k < n; ++k) step[k] = ((k / ww) * W + k % ww) * C;
  const int64_t full = C - C % kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Ho; ++r) {
    const int64_t b = r / Ho, i = r % Ho;
    const T* row = x + (b * H + i * wh) * W * C;
    const float* bias_row = bias == nullptr ? nullptr : bias + b * C;
    for (int64_t j = 0; j < Wo; ++j) {
      const T* window = row + j * ww * C;
      const int64_t out = (r * Wo + j) * C;
      int64_t c = 0;
      for (; c < full; c += kLanes)
        PoolLanes(window + c, step, n, bias_row ? bias_row + c : nullptr,
                  y + out + c, idx + out + c);
      for (; c < C; ++c)
        PoolOne(window + c, step, n, bias_row ? bias_row + c : nullptr,
                y + out + c, idx + out + c);
    }
  }
}

// 16 channels of one pooled row's gradient summed where the index passes
// it (the biased pool's bias gradient: the ReLU's zeros pass none).
template <typename T>
inline void SumLiveLanes(const T* g, const uint8_t* idx, float* sum) {
  const I16 live = __builtin_convertvector(
      LoadVector<B16>(idx) != (B16{} + kNoGradient), I16);
  StoreVector(sum, LoadVector<F16>(sum) + (live ? Widen(g) : F16{}));
}
template <typename T>
inline void SumLiveOne(const T* g, const uint8_t* idx, float* sum) {
  *sum += *idx != kNoGradient ? WidenOne(*g) : 0.0f;
}

// bias_rows: nullptr, or [B, H / wh, C] float32, each pooled row's sum of
// the gradient where the index passes it (over the row's windows, in
// order); XLA sums the rows.
template <typename T>
void Backward(const T* g, const uint8_t* idx, T* dx, float* bias_rows,
              int64_t B, int64_t H, int64_t W, int64_t C, int64_t wh,
              int64_t ww) {
  const int64_t Ho = H / wh, Wo = W / ww;
  const int64_t full = C - C % kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Ho; ++r) {
    const int64_t b = r / Ho, i = r % Ho;
    if (bias_rows != nullptr) {
      float* sum = bias_rows + r * C;
      std::memset(sum, 0, C * sizeof(float));
      for (int64_t j = 0; j < Wo; ++j) {
        const T* gj = g + (r * Wo + j) * C;
        const uint8_t* ij = idx + (r * Wo + j) * C;
        int64_t c = 0;
        for (; c < full; c += kLanes) SumLiveLanes(gj + c, ij + c, sum + c);
        for (; c < C; ++c) SumLiveOne(gj + c, ij + c, sum + c);
      }
    }
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

ffi::Error CheckGeometry(ffi::Span<const int64_t> x, int64_t wh, int64_t ww) {
  if (!HasAvx512())
    return ffi::Error::InvalidArgument("max_pool: needs AVX-512 (F, BW, VL, DQ)");
  if (x.size() != 4)
    return ffi::Error::InvalidArgument("max_pool: operand must be [B, H, W, C]");
  // (An index is a uint8, and kNoGradient is none of a window's.)
  if (wh < 1 || ww < 1 || wh * ww >= kNoGradient || x[1] < wh || x[2] < ww)
    return ffi::Error::InvalidArgument(
        "max_pool: window must fit the input and hold 1 to 254 elements");
  // max_pool_native.max_pool crops the rows and columns no window covers,
  // so every element of x (and dx) belongs to exactly one window.
  if (x[1] % wh || x[2] % ww)
    return ffi::Error::InvalidArgument(
        "max_pool: spatial sizes must be multiples of the window");
  return ffi::Error::Success();
}

ffi::Error Pool(ffi::AnyBuffer x, const float* bias,
                ffi::Result<ffi::AnyBuffer> y,
                ffi::Result<ffi::Buffer<ffi::U8>> idx, int64_t wh, int64_t ww) {
  auto d = x.dimensions();
  if (auto e = CheckGeometry(d, wh, ww); e.failure()) return e;
  if (x.element_type() != y->element_type())
    return ffi::Error::InvalidArgument("max_pool: result dtype differs");
  if (x.element_type() == ffi::DataType::F32) {
    Forward(static_cast<const float*>(x.untyped_data()), bias,
            static_cast<float*>(y->untyped_data()), idx->typed_data(), d[0],
            d[1], d[2], d[3], wh, ww);
  } else if (x.element_type() == ffi::DataType::BF16) {
    Forward(static_cast<const uint16_t*>(x.untyped_data()), bias,
            static_cast<uint16_t*>(y->untyped_data()), idx->typed_data(),
            d[0], d[1], d[2], d[3], wh, ww);
  } else {
    return ffi::Error::InvalidArgument("max_pool: dtype must be f32 or bf16");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardHandler(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                          ffi::Result<ffi::Buffer<ffi::U8>> idx, int64_t wh,
                          int64_t ww) {
  return Pool(x, nullptr, y, idx, wh, ww);
}

ffi::Error BiasReluHandler(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> bias,
                           ffi::Result<ffi::AnyBuffer> y,
                           ffi::Result<ffi::Buffer<ffi::U8>> idx, int64_t wh,
                           int64_t ww) {
  auto d = x.dimensions(), b = bias.dimensions();
  if (d.size() == 4 && (b.size() != 2 || b[0] != d[0] || b[1] != d[3]))
    return ffi::Error::InvalidArgument(
        "max_pool_bias_relu: bias must be [B, C] float32 for x [B, H, W, C]");
  return Pool(x, bias.typed_data(), y, idx, wh, ww);
}

ffi::Error Scatter(ffi::AnyBuffer g, ffi::Buffer<ffi::U8> idx,
                   ffi::Result<ffi::AnyBuffer> dx, float* bias_rows,
                   int64_t wh, int64_t ww) {
  auto d = dx->dimensions();
  if (auto e = CheckGeometry(d, wh, ww); e.failure()) return e;
  if (g.element_type() != dx->element_type())
    return ffi::Error::InvalidArgument("max_pool: result dtype differs");
  if (g.element_type() == ffi::DataType::F32) {
    Backward(static_cast<const float*>(g.untyped_data()), idx.typed_data(),
             static_cast<float*>(dx->untyped_data()), bias_rows, d[0], d[1],
             d[2], d[3], wh, ww);
  } else if (g.element_type() == ffi::DataType::BF16) {
    Backward(static_cast<const uint16_t*>(g.untyped_data()), idx.typed_data(),
             static_cast<uint16_t*>(dx->untyped_data()), bias_rows, d[0],
             d[1], d[2], d[3], wh, ww);
  } else {
    return ffi::Error::InvalidArgument("max_pool: dtype must be f32 or bf16");
  }
  return ffi::Error::Success();
}

ffi::Error BackwardHandler(ffi::AnyBuffer g, ffi::Buffer<ffi::U8> idx,
                           ffi::Result<ffi::AnyBuffer> dx, int64_t wh,
                           int64_t ww) {
  return Scatter(g, idx, dx, nullptr, wh, ww);
}

ffi::Error BiasReluBackwardHandler(ffi::AnyBuffer g, ffi::Buffer<ffi::U8> idx,
                                   ffi::Result<ffi::AnyBuffer> dx,
                                   ffi::Result<ffi::Buffer<ffi::F32>> rows,
                                   int64_t wh, int64_t ww) {
  auto d = dx->dimensions(), r = rows->dimensions();
  if (d.size() == 4 && wh > 0 &&
      (r.size() != 3 || r[0] != d[0] || r[1] != d[1] / wh || r[2] != d[3]))
    return ffi::Error::InvalidArgument(
        "max_pool_bias_relu: bias rows must be [B, H / wh, C] float32");
  return Scatter(g, idx, dx, rows->typed_data(), wh, ww);
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnMaxPoolBiasRelu, BiasReluHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("wh")
                                  .Attr<int64_t>("ww"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnMaxPoolBiasReluBackward,
                              BiasReluBackwardHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("wh")
                                  .Attr<int64_t>("ww"));

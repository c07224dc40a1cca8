// A network's first conv block in one pass each way: a K x K convolution
// ('SAME' padding, stride 1) of a float32 image with few channels (Cin 1
// or 3), a 2x2 max-pool, a per-channel bias and a ReLU (the MNIST CNN's
// conv1 block, layers.ConvReluMaxPool). The full-resolution convolution
// output is never written: the forward writes the pooled, biased, ReLU'd
// map and a uint8 index (the window's first maximal element, 255 where
// the ReLU zeroes it); the backward reads the pooled gradient and the
// index and writes, per example, the kernel's and the bias's gradient
// sums. Arithmetic is float32 (the products and sums of a float32
// convolution), the result rounded once to float32 or bfloat16.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_lanes.h"
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
namespace {

using namespace cnn_native;  // NOLINT: the kernels' vocabulary

// AVX-512 code: see avx512_lanes.h.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

// a * b + c in one rounding (GCC contracts nothing under -std=c++17).
inline F16 Fma(F16 a, F16 b, F16 c) { return _mm512_fmadd_ps(a, b, c); }

// One example's image, zero-padded by K / 2 on every side: [Hp, Wp, CIN].
template <int K, int CIN>
void Pad(const float* x, int64_t H, int64_t W, std::vector<float>* padded) {
  const int64_t p = K / 2, Wp = W + 2 * p;
  padded->assign((H + 2 * p) * Wp * CIN, 0.0f);
  for (int64_t h = 0; h < H; ++h)
    std::memcpy(padded->data() + ((h + p) * Wp + p) * CIN, x + h * W * CIN,
                W * CIN * sizeof(float));
}

// Forward for one example: y, idx [Ho, Wo, C]; w [K, K, CIN, C]; bias [C].
template <int K, int CIN, typename T>
void ForwardExample(const float* padded, int64_t Wp, const float* w,
                    const float* bias, int64_t Ho, int64_t Wo, int64_t C,
                    T* y, uint8_t* idx) {
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j = 0; j < Wo; ++j) {
      // The window's top-left input element (padded coordinates).
      const float* corner = padded + (2 * i * Wp + 2 * j) * CIN;
      for (int64_t c = 0; c < C; c += kLanes) {
        F16 acc[4] = {F16{}, F16{}, F16{}, F16{}};
        for (int kh = 0; kh < K; ++kh)
          for (int kw = 0; kw < K; ++kw)
            for (int ci = 0; ci < CIN; ++ci) {
              const F16 wv = Widen(w + ((kh * K + kw) * CIN + ci) * C + c);
              for (int p = 0; p < 4; ++p) {
                const float xv =
                    corner[((kh + p / 2) * Wp + kw + p % 2) * CIN + ci];
                acc[p] = Fma(F16{} + xv, wv, acc[p]);
              }
            }
        // The max (a NaN wins, as jnp.maximum) and its first element.
        F16 m = acc[0];
        for (int p = 1; p < 4; ++p)
          m = (acc[p] > m) | (acc[p] != acc[p]) ? acc[p] : m;
        I16 first = I16{} + 4;
        for (int p = 3; p >= 0; --p)
          first = acc[p] == m ? I16{} + p : first;
        const F16 v = m + Widen(bias + c);
        const I16 live = v > 0;
        const int64_t out = (i * Wo + j) * C + c;
        NarrowRounded(live | (v != v) ? v : F16{}, y + out);  // a NaN passes the ReLU
        first = live ? first : I16{} + kNoGradient;
        StoreVector(idx + out, __builtin_convertvector(first, B16));
      }
    }
  }
}

// Backward for one example: dw [K, K, CIN, C] and db [C] of this example.
template <int K, int CIN, typename T>
void BackwardExample(const float* padded, int64_t Wp, const T* g,
                     const uint8_t* idx, int64_t Ho, int64_t Wo, int64_t C,
                     float* dw, float* db) {
  for (int64_t c = 0; c < C; c += kLanes) {
    F16 acc[K * K * CIN];
    for (auto& a : acc) a = F16{};
    F16 bias_sum{};
    for (int64_t i = 0; i < Ho; ++i) {
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t at = (i * Wo + j) * C + c;
        const F16 gv = Widen(g + at);
        const I16 index = __builtin_convertvector(LoadVector<B16>(idx + at),
                                                  I16);
        bias_sum += index != kNoGradient ? gv : F16{};
        const float* corner = padded + (2 * i * Wp + 2 * j) * CIN;
        for (int p = 0; p < 4; ++p) {
          const F16 gp = index == p ? gv : F16{};
          for (int kh = 0; kh < K; ++kh)
            for (int kw = 0; kw < K; ++kw)
              for (int ci = 0; ci < CIN; ++ci) {
                F16& a = acc[(kh * K + kw) * CIN + ci];
                a = Fma(F16{} + corner[((kh + p / 2) * Wp + kw + p % 2) * CIN +
                                       ci],
                        gp, a);
              }
        }
      }
    }
    for (int t = 0; t < K * K * CIN; ++t) StoreVector(dw + t * C + c, acc[t]);
    StoreVector(db + c, bias_sum);
  }
}

// body(b, padded) for every example b, on OpenMP threads, each with its
// own zero-padded copy of the example's image.
template <int K, int CIN, typename Body>
void ForEachExample(const float* x, int64_t B, int64_t H, int64_t W,
                    Body body) {
#pragma omp parallel
  {
    std::vector<float> padded;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      Pad<K, CIN>(x + b * H * W * CIN, H, W, &padded);
      body(b, padded.data());
    }
  }
}

template <int K, int CIN, typename T>
void Forward(const float* x, const float* w, const float* bias, T* y,
             uint8_t* idx, int64_t B, int64_t H, int64_t W, int64_t C) {
  const int64_t Ho = H / 2, Wo = W / 2, Wp = W + 2 * (K / 2);
  ForEachExample<K, CIN>(x, B, H, W, [&](int64_t b, const float* padded) {
    ForwardExample<K, CIN>(padded, Wp, w, bias + b * C, Ho, Wo, C,
                           y + b * Ho * Wo * C, idx + b * Ho * Wo * C);
  });
}

template <int K, int CIN, typename T>
void Backward(const float* x, const T* g, const uint8_t* idx, float* dw,
              float* db, int64_t B, int64_t H, int64_t W, int64_t C) {
  const int64_t Ho = H / 2, Wo = W / 2, Wp = W + 2 * (K / 2);
  ForEachExample<K, CIN>(x, B, H, W, [&](int64_t b, const float* padded) {
    BackwardExample<K, CIN>(padded, Wp, g + b * Ho * Wo * C,
                            idx + b * Ho * Wo * C, Ho, Wo, C,
                            dw + b * K * K * CIN * C, db + b * C);
  });
}

#pragma GCC pop_options

// The (K, CIN) the kernels are compiled for.
#define CNN_CONV_POOL_SHAPES(X) X(3, 1) X(3, 3) X(5, 1) X(5, 3)

ffi::Error Unsupported() {
  return ffi::Error::InvalidArgument(
      "conv_max_pool: the kernel must be 3x3 or 5x5 over 1 or 3 channels");
}

// x [B, H, W, CIN] float32, w [K, K, CIN, C] float32 (as spans of 4).
ffi::Error CheckShapes(const int64_t* x, int64_t x_rank, const int64_t* w,
                       int64_t w_rank) {
  if (!HasAvx512())
    return ffi::Error::InvalidArgument(
        "conv_max_pool: needs AVX-512 (F, BW, VL, DQ)");
  if (x_rank != 4 || w_rank != 4 || w[0] != w[1] || w[2] != x[3] ||
      w[3] % kLanes != 0 || x[1] < 2 || x[2] < 2)
    return ffi::Error::InvalidArgument(
        "conv_max_pool: x must be [B, H >= 2, W >= 2, Cin] and the kernel "
        "[K, K, Cin, C] with C a multiple of 16");
  return ffi::Error::Success();
}

ffi::Error ForwardHandler(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> bias,
                          ffi::Result<ffi::AnyBuffer> y,
                          ffi::Result<ffi::Buffer<ffi::U8>> idx) {
  auto d = x.dimensions(), k = w.dimensions(), b = bias.dimensions();
  if (auto e = CheckShapes(d.begin(), d.size(), k.begin(), k.size());
      e.failure())
    return e;
  if (b.size() != 2 || b[0] != d[0] || b[1] != k[3])
    return ffi::Error::InvalidArgument(
        "conv_max_pool: bias must be [B, C] float32");
  const bool bf16 = y->element_type() == ffi::DataType::BF16;
  if (!bf16 && y->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(
        "conv_max_pool: the result must be f32 or bf16");
#define CNN_FORWARD(KK, CC)                                                 \
  if (k[0] == KK && k[2] == CC) {                                           \
    if (bf16)                                                               \
      Forward<KK, CC>(x.typed_data(), w.typed_data(), bias.typed_data(),    \
                      static_cast<uint16_t*>(y->untyped_data()),            \
                      idx->typed_data(), d[0], d[1], d[2], k[3]);           \
    else                                                                    \
      Forward<KK, CC>(x.typed_data(), w.typed_data(), bias.typed_data(),    \
                      static_cast<float*>(y->untyped_data()),               \
                      idx->typed_data(), d[0], d[1], d[2], k[3]);           \
    return ffi::Error::Success();                                           \
  }
  CNN_CONV_POOL_SHAPES(CNN_FORWARD)
#undef CNN_FORWARD
  return Unsupported();
}

ffi::Error BackwardHandler(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer g,
                           ffi::Buffer<ffi::U8> idx,
                           ffi::Result<ffi::Buffer<ffi::F32>> dw,
                           ffi::Result<ffi::Buffer<ffi::F32>> db) {
  // dw: each example's [K, K, CIN, C], so [B, K, K, CIN, C]; db [B, C].
  auto d = x.dimensions(), k = dw->dimensions(), b = db->dimensions();
  if (k.size() != 5 || k[0] != d[0])
    return ffi::Error::InvalidArgument(
        "conv_max_pool: the kernel gradient must be [B, K, K, Cin, C]");
  if (auto e = CheckShapes(d.begin(), d.size(), k.begin() + 1, 4);
      e.failure())
    return e;
  if (b.size() != 2 || b[0] != d[0] || b[1] != k[4])
    return ffi::Error::InvalidArgument(
        "conv_max_pool: the bias gradient must be [B, C]");
  const bool bf16 = g.element_type() == ffi::DataType::BF16;
  if (!bf16 && g.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(
        "conv_max_pool: the gradient must be f32 or bf16");
#define CNN_BACKWARD(KK, CC)                                                \
  if (k[1] == KK && k[3] == CC) {                                           \
    if (bf16)                                                               \
      Backward<KK, CC>(x.typed_data(),                                      \
                       static_cast<const uint16_t*>(g.untyped_data()),      \
                       idx.typed_data(), dw->typed_data(), db->typed_data(), \
                       d[0], d[1], d[2], k[4]);                             \
    else                                                                    \
      Backward<KK, CC>(x.typed_data(),                                      \
                       static_cast<const float*>(g.untyped_data()),         \
                       idx.typed_data(), dw->typed_data(), db->typed_data(), \
                       d[0], d[1], d[2], k[4]);                             \
    return ffi::Error::Success();                                           \
  }
  CNN_CONV_POOL_SHAPES(CNN_BACKWARD)
#undef CNN_BACKWARD
  return Unsupported();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvMaxPoolForward, ForwardHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::U8>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvMaxPoolBackward, BackwardHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The transforms of Winograd's F(4x4, 3x3) convolution (Lavin & Gray,
// 2016), 16 channels at a time, for conv/winograd.py. A 3x3 'SAME' stride-1
// convolution of x [N, H, W, C] is computed there as
//   v = InputTiles(x)    [36, N, T, C]: B^T d B for every 6x6 tile d of the
//                        zero-padded x (T = ceil(H/4) * ceil(W/4) tiles of
//                        4x4 outputs each, overlapping by 2),
//   m = v @ U            36 matmuls [N*T, C] x [C, D] on oneDNN
//                        (onednn_dense.batched_matmul; U = G w G^T, XLA),
//   y = OutputTiles(m)   A^T m A, the 4x4 outputs of each tile, [N, H, W, D],
// 36 products where a direct 3x3 convolution makes 144 (4x fewer flops).
// The transforms are linear; their transposes (InputTilesT, OutputTilesT)
// are the gradients' passes. Each is one memory-bound pass that XLA's own
// fusions ran 10-100x slower (experiments/bench_winograd.py).
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

// The 1-D transforms, on 6 (or 4) vectors `s` apart. B^T:
//   [4  0 -5  0 1 0] [0 -4 -4  1 1 0] [0 4 -4 -1 1 0]
//   [0 -2 -1  2 1 0] [0  2 -1 -2 1 0] [0 4  0 -5 0 1]
inline void BT(const F16* d, F16* t, int s) {
  const F16 d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s],
            d4 = d[4 * s], d5 = d[5 * s];
  t[0] = 4 * d0 - 5 * d2 + d4;
  t[s] = -4 * (d1 + d2) + d3 + d4;
  t[2 * s] = 4 * (d1 - d2) - d3 + d4;
  t[3 * s] = 2 * (d3 - d1) - d2 + d4;
  t[4 * s] = 2 * (d1 - d3) - d2 + d4;
  t[5 * s] = 4 * d1 - 5 * d3 + d5;
}
// B, BT's transpose.
inline void B(const F16* t, F16* d, int s) {
  const F16 t0 = t[0], t1 = t[s], t2 = t[2 * s], t3 = t[3 * s],
            t4 = t[4 * s], t5 = t[5 * s];
  d[0] = 4 * t0;
  d[s] = 4 * (t2 - t1 + t5) + 2 * (t4 - t3);
  d[2 * s] = -5 * t0 - 4 * (t1 + t2) - t3 - t4;
  d[3 * s] = t1 - t2 + 2 * (t3 - t4) - 5 * t5;
  d[4 * s] = t0 + t1 + t2 + t3 + t4;
  d[5 * s] = t5;
}
// A^T, 6 -> 4: [1 1 1 1 1 0] [0 1 -1 2 -2 0] [0 1 1 4 4 0] [0 1 -1 8 -8 1].
inline void AT(const F16* m, F16* y, int s, int ys) {
  const F16 a = m[s] + m[2 * s], b = m[s] - m[2 * s];
  const F16 c = m[3 * s] + m[4 * s], e = m[3 * s] - m[4 * s];
  y[0] = m[0] + a + c;
  y[ys] = b + 2 * e;
  y[2 * ys] = a + 4 * c;
  y[3 * ys] = b + 8 * e + m[5 * s];
}
// A, 4 -> 6.
inline void A(const F16* g, F16* m, int gs, int s) {
  const F16 g0 = g[0], g1 = g[gs], g2 = g[2 * gs], g3 = g[3 * gs];
  const F16 a = g0 + g2, b = g1 + g3, c = g0 + 4 * g2, e = 2 * g1 + 8 * g3;
  m[0] = g0;
  m[s] = a + b;
  m[2 * s] = a - b;
  m[3 * s] = c + e;
  m[4 * s] = c - e;
  m[5 * s] = g3;
}

// A map [N, H, W, C] and its tiles [36, N, T, C], T = TH * TW.
struct Tiling {
  int64_t n, h, w, c, th, tw;
  int64_t Tiles() const { return n * th * tw; }
  // Tile p's example and (row, column) among the example's tiles.
  struct Where { int64_t b, i, j; };
  Where Of(int64_t p) const { return {p / (tw * th), p / tw % th, p % tw}; }
  // The map's vector at (b, row, col, channel c0), or null outside it.
  template <typename P>
  P* At(P* map, int64_t b, int64_t row, int64_t col, int64_t c0) const {
    if (row < 0 || row >= h || col < 0 || col >= w) return nullptr;
    return map + ((b * h + row) * w + col) * c + c0;
  }
  // Element k of tile p's 36, channels from c0.
  template <typename P>
  P* Tile(P* tiles, int k, int64_t p, int64_t c0) const {
    return tiles + (k * Tiles() + p) * c + c0;
  }
};

void InputTiles(const float* x, float* v, const Tiling& t) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < t.Tiles(); ++p) {
    const auto [b, i, j] = t.Of(p);
    F16 d[36], u[36];
    for (int64_t c = 0; c < t.c; c += kLanes) {
      for (int r = 0; r < 6; ++r)
        for (int q = 0; q < 6; ++q) {
          const float* src = t.At(x, b, 4 * i - 1 + r, 4 * j - 1 + q, c);
          d[6 * r + q] = src ? LoadVector<F16>(src) : F16{};
        }
      for (int q = 0; q < 6; ++q) BT(d + q, u + q, 6);
      for (int r = 0; r < 6; ++r) BT(u + 6 * r, d + 6 * r, 1);
      for (int k = 0; k < 36; ++k) StoreVector(t.Tile(v, k, p, c), d[k]);
    }
  }
}

// InputTiles' transpose: each tile's B v B^T added into the map. Tiles
// overlap, so one thread owns each example's tiles.
void InputTilesT(const float* v, float* x, const Tiling& t) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < t.n; ++b) {
    std::memset(x + b * t.h * t.w * t.c, 0, sizeof(float) * t.h * t.w * t.c);
    for (int64_t i = 0; i < t.th; ++i)
      for (int64_t j = 0; j < t.tw; ++j) {
        const int64_t p = (b * t.th + i) * t.tw + j;
        F16 d[36], u[36];
        for (int64_t c = 0; c < t.c; c += kLanes) {
          for (int k = 0; k < 36; ++k) d[k] = LoadVector<F16>(t.Tile(v, k, p, c));
          for (int r = 0; r < 6; ++r) B(d + 6 * r, u + 6 * r, 1);
          for (int q = 0; q < 6; ++q) B(u + q, d + q, 6);
          for (int r = 0; r < 6; ++r)
            for (int q = 0; q < 6; ++q) {
              float* dst = t.At(x, b, 4 * i - 1 + r, 4 * j - 1 + q, c);
              if (dst) StoreVector(dst, LoadVector<F16>(dst) + d[6 * r + q]);
            }
        }
      }
  }
}

void OutputTiles(const float* m, float* y, const Tiling& t) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < t.Tiles(); ++p) {
    const auto [b, i, j] = t.Of(p);
    F16 d[36], u[24], o[16];
    for (int64_t c = 0; c < t.c; c += kLanes) {
      for (int k = 0; k < 36; ++k) d[k] = LoadVector<F16>(t.Tile(m, k, p, c));
      for (int q = 0; q < 6; ++q) AT(d + q, u + q, 6, 6);
      for (int r = 0; r < 4; ++r) AT(u + 6 * r, o + 4 * r, 1, 1);
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {
          float* dst = t.At(y, b, 4 * i + r, 4 * j + q, c);
          if (dst) StoreVector(dst, o[4 * r + q]);
        }
    }
  }
}

// OutputTiles' transpose: A g A^T of each tile's 4x4 outputs (zero past
// the map's edge).
void OutputTilesT(const float* y, float* m, const Tiling& t) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < t.Tiles(); ++p) {
    const auto [b, i, j] = t.Of(p);
    F16 o[16], u[24], d[36];
    for (int64_t c = 0; c < t.c; c += kLanes) {
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {
          const float* src = t.At(y, b, 4 * i + r, 4 * j + q, c);
          o[4 * r + q] = src ? LoadVector<F16>(src) : F16{};
        }
      for (int r = 0; r < 4; ++r) A(o + 4 * r, u + 6 * r, 1, 1);
      for (int q = 0; q < 6; ++q) A(u + q, d + q, 6, 6);
      for (int k = 0; k < 36; ++k) StoreVector(t.Tile(m, k, p, c), d[k]);
    }
  }
}

#pragma GCC pop_options

// The tiling of `map` [N, H, W, C] that `tiles` [36, N, T, C] must match.
ffi::ErrorOr<Tiling> Tile(ffi::Span<const int64_t> map,
                          ffi::Span<const int64_t> tiles) {
  if (!HasAvx512())
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "winograd: needs AVX-512 (F, BW, VL, DQ)"));
  if (map.size() != 4 || map[3] % kLanes != 0)
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "winograd: the map must be [N, H, W, C] with C a multiple of 16"));
  Tiling t{map[0], map[1], map[2], map[3], (map[1] + 3) / 4, (map[2] + 3) / 4};
  if (tiles.size() != 4 || tiles[0] != 36 || tiles[1] != t.n ||
      tiles[2] != t.th * t.tw || tiles[3] != t.c)
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "winograd: the tiles must be [36, N, ceil(H/4) * ceil(W/4), C]"));
  return t;
}

// map -> tiles (InputTiles, OutputTilesT) or tiles -> map (the others).
template <void (*Pass)(const float*, float*, const Tiling&)>
ffi::Error MapToTiles(ffi::Buffer<ffi::F32> map,
                      ffi::Result<ffi::Buffer<ffi::F32>> tiles) {
  auto t = Tile(map.dimensions(), tiles->dimensions());
  if (t.has_error()) return t.error();
  Pass(map.typed_data(), tiles->typed_data(), *t);
  return ffi::Error::Success();
}
template <void (*Pass)(const float*, float*, const Tiling&)>
ffi::Error TilesToMap(ffi::Buffer<ffi::F32> tiles,
                      ffi::Result<ffi::Buffer<ffi::F32>> map) {
  auto t = Tile(map->dimensions(), tiles.dimensions());
  if (t.has_error()) return t.error();
  Pass(tiles.typed_data(), map->typed_data(), *t);
  return ffi::Error::Success();
}

}  // namespace

#define CNN_WINOGRAD_PASS(SYMBOL, HANDLER)                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(SYMBOL, HANDLER,                      \
                                ffi::Ffi::Bind()                      \
                                    .Arg<ffi::Buffer<ffi::F32>>()     \
                                    .Ret<ffi::Buffer<ffi::F32>>());
CNN_WINOGRAD_PASS(CnnWinogradInputTiles, MapToTiles<InputTiles>)
CNN_WINOGRAD_PASS(CnnWinogradOutputTilesT, MapToTiles<OutputTilesT>)
CNN_WINOGRAD_PASS(CnnWinogradInputTilesT, TilesToMap<InputTilesT>)
CNN_WINOGRAD_PASS(CnnWinogradOutputTiles, TilesToMap<OutputTiles>)
#undef CNN_WINOGRAD_PASS

"""3x3 convolutions as Winograd's F(4x4, 3x3) on AVX-512 CPUs.

A float32 ResNet's train step on the CPU is four fifths convolutions that
oneDNN already runs near the machine's float32 peak, so it only gets faster
with fewer flops. Winograd's F(4x4, 3x3) (Lavin & Gray, 2016) computes a
3x3 'SAME' stride-1 convolution's 4x4 output tiles from 6x6 input tiles
with 36 products per tile and channel pair where the direct convolution
makes 144:

  v = B^T d B for every 6x6 tile d of x    native/winograd.cc, [36, N, T, C]
  U = G w G^T                              XLA, [36, C, D]
  m = v @ U                                36 matmuls, oneDNN's f32 matmul
                                           (onednn_dense.batched_matmul)
  y = A^T m A, each tile's 4x4 outputs     native/winograd.cc, [N, H, W, D]

The transforms are linear, so the gradients are the same steps transposed
(each transform's VJP is the other direction's native pass; the matmuls'
are matmuls), reverse mode to any order. Values differ from the direct
convolution by float32 rounding of the transforms (relative 1e-6 to 1e-5,
tests/conv/test_winograd.py).

Measured on a 2-core AMD EPYC Zen 4 (avx512_bf16, no AMX), forward and
both gradients of one ResNet-18 layer against oneDNN's direct convolution,
interleaved in one run (experiments/bench_winograd.py): at batch 128,
32x32x64 1.63x, 16x16x128 1.95x, 8x8x256 2.38x, 4x4x512 2.30x (one tile
per image); at batch 32 1.40x, 1.88x, 2.09x, 1.42x. XLA's own batched dots
in place of oneDNN's matmuls made the first three 0.89x, 1.29x, 1.37x at
batch 128 (the 64-channel layer then lost inside the train step), and
XLA's einsum for the kernel's transform G w G^T cost 4x4x512 twice its
products (0.93x oneDNN) until it became one product (`_GG`). So `usable`
takes maps of at least MIN_SIZE a side, MIN_CHANNELS channels in and out
and at least MIN_ROWS tiles in the batch. ResNet-18's float32 train step at batch
128: see the README's "Winograd convolutions" (experiments/bench_cpu.py).

Where it runs: conv_impls' 'auto' and 'winograd' pick it on the CPU for
float32 convolutions that `usable` accepts; bfloat16 ones (and float32
ones under bfloat16 matmul precision, on CPUs with bf16 dot products) stay
on oneDNN's bf16 kernels, which are as fast in the train step and which
Winograd's transforms would make less accurate. On CPUs without bf16 dot
products, bfloat16 matmul precision leaves oneDNN in float32, and
Winograd takes the layers as under float32.
Under vmap the members fold into the batch (a kernel per member is a
batched matmul); under data parallelism each device transforms its shard
of the batch. MIN_ROWS is checked against the batch as traced: under
data parallelism the global one, so a device's shard may be smaller.
"""

import functools

import jax
from jax import custom_batching
from jax import lax
from jax.experimental import custom_partitioning
import jax.numpy as jnp
import numpy as np

from cnn_jax.conv import conv_im2col
from cnn_jax.conv import max_pool_native
from cnn_jax.conv import onednn_bfloat16
from cnn_jax.conv import onednn_build
from cnn_jax.conv import onednn_calls
from cnn_jax.conv import onednn_dense

TILE = 4  # outputs per tile side: F(4x4, 3x3)
_POINTS = (TILE + 2) ** 2  # 36 products per tile
LANES = 16  # channels per vector in native/winograd.cc
# 4x4 maps are one 6x6 tile per image (2x2 maps would compute 4x the
# outputs they keep: not measured, not taken).
MIN_SIZE = 4
MIN_CHANNELS = 64  # the narrowest layer measured (32x32x64: 1.35-1.74x)
# The products' rows (batch x tiles per image) below which oneDNN's direct
# convolution is as fast: the kernel's transform, its gradient and the
# kernel-gradient product cost the same at any batch. Forward and both
# gradients, interleaved (2-core AMD EPYC Zen 4): 16 rows 0.74-1.00x
# (8x8x256, 4x4x512); 32 rows 1.09-1.32x (4x4x512, 8x8x256, 7x7x512,
# 14x14x256); 64 rows 1.07-2.26x (the same and 28x28x128 at 98 rows);
# 128 rows 1.55-2.17x.
MIN_ROWS = 64

# G of F(4x4, 3x3): the kernel transform U = G w G^T.
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)
# The same transform as one matrix on the 9 taps: U[(i, j)] = sum over
# (k, l) of G[i, k] G[j, l] w[k, l], so U = kron(G, G) @ w [9, C * D], one
# product with a 9-long contraction. XLA's einsum of G w G^T took 50 ms (and
# 26 ms for its gradient) on a 3x3x512x512 kernel, twice the 4x4x512
# layer's 36 products; XLA's dot of kron(G, G) 3.0 ms (4.2 ms), oneDNN's
# matmul 4.7 ms (5.9 ms) (2-core AMD EPYC Zen 4). oneDNN's it is: XLA's
# dot packs w into a buffer it mallocs on every call (38 MB at 512
# channels), in the middle of the step, where it splits the hole that the
# step before's temporaries left, and the heap grew by 1.4 GB every few
# steps of ResNet-18 at batch 128 (training/cpu_malloc.py).
_GG = np.kron(_G, _G)


def _is_one(v) -> bool:
  return v is None or all(int(s) == 1 for s in v)


def usable(lhs_shape, rhs_shape, window_strides, padding,
           lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count: int = 1, batch_group_count: int = 1,
           precision=None, preferred_element_type=None,
           dtype=jnp.float32) -> bool:
  """Whether `conv` computes this `lax.conv_general_dilated` here: the CPU
  backend on an AVX-512 CPU whose native kernels are built
  (max_pool_native.cpu_supported), float32 not multiplied in bfloat16 (as
  under bfloat16 matmul precision on a CPU with bf16 dot products),
  channels-last x [N, H, W, C] with H, W >= MIN_SIZE and at least
  MIN_ROWS tiles (N * ceil(H / 4) * ceil(W / 4)), a 3x3 kernel with
  C and D multiples of 16 and at least MIN_CHANNELS, stride 1, 'SAME'
  padding, no dilation or groups."""
  if (len(lhs_shape) != 4 or tuple(rhs_shape[:2]) != (3, 3)
      or jnp.dtype(dtype) != jnp.float32
      or preferred_element_type not in (None, jnp.float32)
      or not _is_one(window_strides) or not _is_one(rhs_dilation)):
    return False
  if (onednn_bfloat16.bfloat16_requested(precision)
      and onednn_bfloat16.bfloat16_native()):
    # oneDNN's bf16 kernels take these. Layer by layer float32 F(4x4)
    # beat them from 128 channels (forward and both gradients, 2-core AMD
    # EPYC Zen 4, `bench_winograd.py --bf16`, bf16 time over F(4x4)'s at
    # batch 128: 32x32x64 0.80, 16x16x128 1.21, 8x8x256 1.35, 4x4x512
    # 1.59), but ResNet-18's bf16 train step with it there was no faster:
    # 87, 93, 86 img/s against 102, 96, 94 without, in processes taken in
    # turn (session 18). Where the CPU has no bf16 dot products, oneDNN
    # runs these layers in float32 and Winograd takes them as it would.
    return False
  if conv_im2col.supported(lhs_shape, rhs_shape, dimension_numbers,
                           lhs_dilation, feature_group_count,
                           batch_group_count) is not None:
    return False  # not channels-last, or dilated or grouped
  pads = (lax.padtype_to_pads(lhs_shape[1:3], (3, 3), (1, 1), padding)
          if isinstance(padding, str) else padding)
  channels = (rhs_shape[2], rhs_shape[3])
  return (tuple(map(tuple, pads)) == ((1, 1), (1, 1))
          and min(lhs_shape[1:3]) >= MIN_SIZE
          and np.prod(_tiles_shape(lhs_shape)[1:3]) >= MIN_ROWS
          and all(c % LANES == 0 and c >= MIN_CHANNELS for c in channels)
          and jax.default_backend() == "cpu"
          and max_pool_native.cpu_supported())


def _tiles_shape(map_shape):
  n, h, w, c = map_shape
  return (_POINTS, n, -(-h // TILE) * -(-w // TILE), c)


def _local_map_to_tiles(target, x):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(
      _tiles_shape(x.shape), jnp.float32))(x)


def _local_tiles_to_map(static, tiles):
  target, map_hw = static
  shape = (tiles.shape[1], *map_hw, tiles.shape[3])
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape,
                                                       jnp.float32))(tiles)


# Data parallelism: a map's batch is its dim 0, the tiles' their dim 1.
def _spec(batch, dim):
  return jax.sharding.PartitionSpec(*(None,) * dim, batch)


def _partitioned(local, in_dim, out_dim, rule):
  """custom_partitioning of `local(static, operand)`: each device transforms
  its shard of the batch (dim `in_dim` of the operand, `out_dim` of the
  result)."""
  call = custom_partitioning.custom_partitioning(local, static_argnums=(0,))

  def batch(arg_shapes):
    spec = getattr(arg_shapes[0].sharding, "spec", None)
    return spec[in_dim] if spec is not None and len(spec) > in_dim else None

  def infer(static, mesh, arg_shapes, result_shape):
    del static, result_shape
    return jax.sharding.NamedSharding(mesh, _spec(batch(arg_shapes), out_dim))

  def partition(static, mesh, arg_shapes, result_shape):
    del result_shape
    axes = batch(arg_shapes)
    return (mesh, functools.partial(local, static),
            jax.sharding.NamedSharding(mesh, _spec(axes, out_dim)),
            (jax.sharding.NamedSharding(mesh, _spec(axes, in_dim)),))

  def sharding_rule(static, mesh, operand_types, result_types):
    del static, mesh, operand_types, result_types
    return onednn_calls.batch_only_rule(rule)

  call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=sharding_rule)
  return call


_MAP_TO_TILES = _partitioned(_local_map_to_tiles, 0, 1,
                             "b h w c -> k b t c")
# static: (target, the map's (H, W)).
_TILES_TO_MAP = _partitioned(_local_tiles_to_map, 1, 0,
                             "k b t c -> b h w c")


def _batched(call, map_to_tiles: bool):
  """`call(operand)` made vmappable: the members fold into the batch (dim 0
  of a map, dim 1 of tiles), one call for all of them."""

  @custom_batching.custom_vmap
  def run(a):
    return call(a)

  @run.def_vmap
  def _rule(axis_size, in_batched, a):
    del in_batched  # the only operand is batched, or vmap would not ask
    if map_to_tiles:
      out = run(a.reshape(-1, *a.shape[2:]))  # [36, S * N, T, C]
      out = out.reshape(out.shape[0], axis_size, -1, *out.shape[2:])
      return jnp.moveaxis(out, 1, 0), True
    a = jnp.moveaxis(a, 0, 1)  # [36, S, N, T, C]
    out = run(a.reshape(a.shape[0], -1, *a.shape[3:]))
    return out.reshape(axis_size, -1, *out.shape[1:]), True

  return run


@functools.lru_cache(maxsize=None)
def _pass(target, map_hw=None):
  """One native pass as a vmappable, partitioned function of its operand."""
  if map_hw is None:
    return _batched(lambda x: _MAP_TO_TILES(target, x), True)
  return _batched(lambda t: _TILES_TO_MAP((target, map_hw), t), False)


def _transposed_pair(forward, backward):
  """Two linear maps of (operand, the map's (H, W)), each the other's
  transpose, with VJPs made of each other: reverse mode to any order.
  `forward(map_hw)` and `backward(map_hw)` give the native passes."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
  def there(a, map_hw):
    return forward(map_hw)(a)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
  def back(a, map_hw):
    return backward(map_hw)(a)

  there.defvjp(lambda a, hw: (there(a, hw), None),
               lambda hw, _, ct: (back(ct, hw),))
  back.defvjp(lambda a, hw: (back(a, hw), None),
              lambda hw, _, ct: (there(ct, hw),))
  return there, back


# x -> its tiles' B^T d B, and tiles' products -> the output map.
_input_tiles, _ = _transposed_pair(
    lambda hw: _pass(onednn_build.WINOGRAD_INPUT_TILES),
    lambda hw: _pass(onednn_build.WINOGRAD_INPUT_TILES_T, hw))
_output_tiles, _ = _transposed_pair(
    lambda hw: _pass(onednn_build.WINOGRAD_OUTPUT_TILES, hw),
    lambda hw: _pass(onednn_build.WINOGRAD_OUTPUT_TILES_T))


def conv(x, kernel):
  """A 3x3 'SAME' stride-1 convolution of x [N, H, W, C] (float32) with
  kernel [3, 3, C, D] (HWIO) as F(4x4, 3x3): [N, H, W, D], the values of
  `lax.conv_general_dilated` up to float32 rounding. Needs `usable`'s
  shapes; differentiable in reverse mode to any order."""
  onednn_build.library()  # built and its custom calls registered
  x = x.astype(jnp.float32)
  kernel = kernel.astype(jnp.float32)
  map_hw = tuple(x.shape[1:3])
  u = onednn_dense.batched_matmul(
      _GG[None], kernel.reshape(1, 9, -1)).reshape(_POINTS, *kernel.shape[2:])
  v = _input_tiles(x, map_hw)
  m = onednn_dense.batched_matmul(v.reshape(_POINTS, -1, v.shape[-1]), u)
  return _output_tiles(m.reshape(*v.shape[:-1], u.shape[-1]), map_hw)

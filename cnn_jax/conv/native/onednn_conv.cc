// oneDNN convolutions as XLA:CPU custom calls (jax.ffi), for cnn_jax/onednn.py.
//
// Why: XLA:CPU's own convolutions (YNNPACK/Eigen) keep only part of a
// 2-core machine busy and run a small CNN's 3x3 convolutions 2-3x slower
// than oneDNN, the library PyTorch uses on the CPU. Everything around the
// convolutions (bias, activations, pooling, dense layers, the optimizer)
// stays in XLA, which fuses it.
//
// Three handlers, one per pass of a channels-last convolution
//   x [N, *spatial, C] (*) w [*window, C, O] -> y [N, *out_spatial, O]
// with 1 to 3 spatial dims, float32 or bfloat16; a pass's two operands
// share a dtype, and its result has that dtype too, or is float32 for
// bfloat16 operands (bfloat16 products summed in float32 and returned
// unrounded: what JAX's matmul precision 'bfloat16' asks of a float32
// convolution, which onednn.py casts to bfloat16 on the way in):
//   cnn_onednn_conv_fwd           (x, w)  -> y
//   cnn_onednn_conv_bwd_data      (dy, w) -> dx
//   cnn_onednn_conv_bwd_weights   (x, dy) -> dw
// Attributes (int64 arrays, one entry per spatial dim): strides, pads_lo,
// pads_hi, dilations (XLA's: 1 = no dilation).
//
// Two plain C functions serve cnn_jax/onednn_verify.py, which checks each
// primitive once per machine against a reference before XLA may use it
// (oneDNN 3.2's AVX2 kernels computed a wrong kernel gradient for some
// strided 1x1 convolutions, and cannot create bfloat16 primitives without
// bf16 instructions):
//   CnnOnednnCpuIsa()   the instruction set oneDNN dispatches to here;
//   CnnOnednnRunPass()  one pass on caller-owned buffers, returning oneDNN's
//                       error message instead of failing an XLA program.
//
// oneDNN primitives are built once per geometry and cached (building one
// takes milliseconds). Weights are reordered between the [*window, C, O]
// layout and whatever blocked layout the primitive prefers on every call:
// they are small next to the activations. Scratch memory and the reordered
// weights live in per-thread buffers, so two XLA threads may run
// convolutions at once.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dims = memory::dims;

enum class Pass { kForward, kBackwardData, kBackwardWeights };
using cnn_onednn::kWeights;

using cnn_onednn::Buffer;
using cnn_onednn::Engine;
using cnn_onednn::Stream;

// Everything that defines one convolution, in oneDNN's terms.
struct Geometry {
  // The pass's two operands are in_dtype, its result out_dtype.
  memory::data_type in_dtype, out_dtype;
  Dims src, wei, dst;            // logical: {N, C, *sp}, {O, C, *win}, {N, O, *sp}
  Dims strides, dilations, pads_lo, pads_hi;  // oneDNN dilation: 0 = none
  int spatial;

  Tag ActivationTag() const {
    return spatial == 1 ? Tag::nwc : spatial == 2 ? Tag::nhwc : Tag::ndhwc;
  }
  Tag WeightTag() const {
    return spatial == 1 ? Tag::wio : spatial == 2 ? Tag::hwio : Tag::dhwio;
  }
  // Each tensor's dtype in `pass`: the one the pass writes is its result.
  memory::data_type SrcType(Pass pass) const {
    return pass == Pass::kBackwardData ? out_dtype : in_dtype;
  }
  memory::data_type DstType(Pass pass) const {
    return pass == Pass::kForward ? out_dtype : in_dtype;
  }
  memory::data_type WeightType(Pass pass) const {
    return pass == Pass::kBackwardWeights ? out_dtype : in_dtype;
  }
  memory::desc Src(Pass pass) const {
    return {src, SrcType(pass), ActivationTag()};
  }
  memory::desc Dst(Pass pass) const {
    return {dst, DstType(pass), ActivationTag()};
  }
  memory::desc UserWeights(Pass pass) const {
    return {wei, WeightType(pass), WeightTag()};
  }
  memory::desc AnyWeights(Pass pass) const {
    return {wei, WeightType(pass), Tag::any};
  }

  std::string Key(Pass pass) const {
    std::string key = std::to_string(static_cast<int>(pass)) + ":" +
                      std::to_string(static_cast<int>(in_dtype)) + ">" +
                      std::to_string(static_cast<int>(out_dtype));
    for (const Dims* dims : {&src, &wei, &dst, &strides, &dilations, &pads_lo,
                             &pads_hi}) {
      key += "|";
      for (auto d : *dims) key += std::to_string(d) + ",";
    }
    return key;
  }

  dnnl::primitive_attr Attr() const {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
  }

  // The forward pass; for the gradients, the hint their primitives need
  // (all in_dtype: oneDNN takes it only to pick a matching kernel).
  dnnl::convolution_forward::primitive_desc ForwardDesc(Pass pass) const {
    const memory::data_type out =
        pass == Pass::kForward ? out_dtype : in_dtype;
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training,
        dnnl::algorithm::convolution_direct, {src, in_dtype, ActivationTag()},
        {wei, in_dtype, Tag::any}, {dst, out, ActivationTag()}, strides,
        dilations, pads_lo, pads_hi, Attr());
  }
};

// A built primitive and how its weights differ from the user's layout.
struct Compiled {
  dnnl::primitive primitive;
  memory::desc weights;        // the primitive's weight (or weight-grad) layout
  bool reorder_weights;        // weights != the user's [*window, C, O]
  dnnl::reorder weight_reorder;  // user -> primitive (grads: primitive -> user)
  size_t scratch_bytes;
};

Compiled Build(const Geometry& g, Pass pass) {
  const auto fwd = g.ForwardDesc(pass);
  dnnl::primitive primitive;
  memory::desc weights, scratch;
  if (pass == Pass::kForward) {
    primitive = dnnl::convolution_forward(fwd);
    weights = fwd.weights_desc();
    scratch = fwd.scratchpad_desc();
  } else if (pass == Pass::kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(pass),
        g.AnyWeights(pass), g.Dst(pass), g.strides, g.dilations, g.pads_lo,
        g.pads_hi, fwd, g.Attr());
    primitive = dnnl::convolution_backward_data(pd);
    weights = pd.weights_desc();
    scratch = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(pass),
        g.AnyWeights(pass), g.Dst(pass), g.strides, g.dilations, g.pads_lo,
        g.pads_hi, fwd, g.Attr());
    primitive = dnnl::convolution_backward_weights(pd);
    weights = pd.diff_weights_desc();
    scratch = pd.scratchpad_desc();
  }
  Compiled c{primitive, weights, weights != g.UserWeights(pass), {},
             scratch.get_size()};
  if (c.reorder_weights) {
    memory user(g.UserWeights(pass), Engine(), DNNL_MEMORY_NONE);
    memory blocked(weights, Engine(), DNNL_MEMORY_NONE);
    c.weight_reorder = pass == Pass::kBackwardWeights
                           ? dnnl::reorder(blocked, user)
                           : dnnl::reorder(user, blocked);
  }
  return c;
}

const Compiled& Get(const Geometry& g, Pass pass) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string,
                                               std::unique_ptr<Compiled>>();
  const std::string key = g.Key(pass);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<Compiled>(Build(g, pass))).first;
  }
  return *it->second;
}

// x: [N, *spatial, C] (the full-size activation), w: [*window, C, O],
// y: [N, *out_spatial, O], whichever of them is an input or the output.
ffi::ErrorOr<memory::data_type> OnednnType(ffi::DataType dtype) {
  if (dtype == ffi::DataType::F32) return memory::data_type::f32;
  if (dtype == ffi::DataType::BF16) return memory::data_type::bf16;
  return ffi::Unexpected<ffi::Error>(
      ffi::Error::InvalidArgument("oneDNN conv: dtype must be f32 or bf16"));
}

// in_dtype: the pass's two operands; out_dtype: its result.
ffi::ErrorOr<Geometry> MakeGeometry(
    ffi::DataType in_dtype, ffi::DataType out_dtype,
    ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
    ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
    ffi::Span<const int64_t> pads_lo, ffi::Span<const int64_t> pads_hi,
    ffi::Span<const int64_t> dilations) {
  Geometry g;
  auto in = OnednnType(in_dtype);
  if (in.has_error()) return ffi::Unexpected<ffi::Error>(in.error());
  auto out = OnednnType(out_dtype);
  if (out.has_error()) return ffi::Unexpected<ffi::Error>(out.error());
  if (*in != *out && !(*in == memory::data_type::bf16 &&
                       *out == memory::data_type::f32)) {
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "oneDNN conv: the result must have the operands' dtype, or f32 for "
        "bf16 operands"));
  }
  g.in_dtype = *in;
  g.out_dtype = *out;
  const int64_t spatial = static_cast<int64_t>(x.size()) - 2;
  if (spatial < 1 || spatial > 3 || static_cast<int64_t>(w.size()) != spatial + 2 ||
      static_cast<int64_t>(y.size()) != spatial + 2 ||
      static_cast<int64_t>(strides.size()) != spatial ||
      static_cast<int64_t>(pads_lo.size()) != spatial ||
      static_cast<int64_t>(pads_hi.size()) != spatial ||
      static_cast<int64_t>(dilations.size()) != spatial) {
    return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(
        "oneDNN conv: operands need 1 to 3 spatial dims, attributes one entry "
        "per spatial dim"));
  }
  g.spatial = static_cast<int>(spatial);
  g.src = {x[0], x[spatial + 1]};
  g.wei = {w[spatial + 1], w[spatial]};
  g.dst = {y[0], y[spatial + 1]};
  for (int64_t i = 0; i < spatial; ++i) {
    g.src.push_back(x[i + 1]);
    g.wei.push_back(w[i]);
    g.dst.push_back(y[i + 1]);
    g.strides.push_back(strides[i]);
    g.dilations.push_back(dilations[i] - 1);
    g.pads_lo.push_back(pads_lo[i]);
    g.pads_hi.push_back(pads_hi[i]);
  }
  return g;
}

ffi::Error Run(const Geometry& g, Pass pass, void* activation, void* weights,
               void* other) {
  try {
    const Compiled& c = Get(g, pass);
    dnnl::stream& stream = Stream();
    memory user_weights(g.UserWeights(pass), Engine(), weights);
    memory prim_weights = user_weights;
    if (c.reorder_weights) {
      prim_weights = memory(c.weights, Engine(),
                            Buffer(kWeights, c.weights.get_size()));
      if (pass != Pass::kBackwardWeights) {
        c.weight_reorder.execute(stream, user_weights, prim_weights);
      }
    }
    memory scratch = cnn_onednn::Scratchpad(c.scratch_bytes);
    memory src(g.Src(pass), Engine(), activation);  // x or dx
    memory dst(g.Dst(pass), Engine(), other);       // y or dy
    if (pass == Pass::kForward) {
      c.primitive.execute(stream, {{DNNL_ARG_SRC, src},
                                   {DNNL_ARG_WEIGHTS, prim_weights},
                                   {DNNL_ARG_DST, dst},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (pass == Pass::kBackwardData) {
      c.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst},
                                   {DNNL_ARG_WEIGHTS, prim_weights},
                                   {DNNL_ARG_DIFF_SRC, src},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      c.primitive.execute(stream, {{DNNL_ARG_SRC, src},
                                   {DNNL_ARG_DIFF_DST, dst},
                                   {DNNL_ARG_DIFF_WEIGHTS, prim_weights},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
      if (c.reorder_weights) {
        c.weight_reorder.execute(stream, prim_weights, user_weights);
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

#define CNN_GEOMETRY_ATTRS                                                  \
  ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads_lo,       \
      ffi::Span<const int64_t> pads_hi, ffi::Span<const int64_t> dilations

#define CNN_BIND_GEOMETRY_ATTRS                      \
  .Attr<ffi::Span<const int64_t>>("strides")         \
      .Attr<ffi::Span<const int64_t>>("pads_lo")     \
      .Attr<ffi::Span<const int64_t>>("pads_hi")     \
      .Attr<ffi::Span<const int64_t>>("dilations")

ffi::Error CheckSameDtype(ffi::DataType a, ffi::DataType b) {
  if (a != b) {
    return ffi::Error::InvalidArgument("oneDNN conv: operands differ in dtype");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, CNN_GEOMETRY_ATTRS) {
  if (auto e = CheckSameDtype(x.element_type(), w.element_type());
      e.failure()) return e;
  auto g = MakeGeometry(x.element_type(), y->element_type(), x.dimensions(),
                        w.dimensions(), y->dimensions(), strides, pads_lo,
                        pads_hi, dilations);
  if (g.has_error()) return g.error();
  return Run(*g, Pass::kForward, x.untyped_data(), w.untyped_data(),
             y->untyped_data());
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> dx, CNN_GEOMETRY_ATTRS) {
  if (auto e = CheckSameDtype(dy.element_type(), w.element_type());
      e.failure()) return e;
  auto g = MakeGeometry(dy.element_type(), dx->element_type(),
                        dx->dimensions(), w.dimensions(), dy.dimensions(),
                        strides, pads_lo, pads_hi, dilations);
  if (g.has_error()) return g.error();
  return Run(*g, Pass::kBackwardData, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data());
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dw, CNN_GEOMETRY_ATTRS) {
  if (auto e = CheckSameDtype(x.element_type(), dy.element_type());
      e.failure()) return e;
  auto g = MakeGeometry(x.element_type(), dw->element_type(), x.dimensions(),
                        dw->dimensions(), dy.dimensions(), strides, pads_lo,
                        pads_hi, dilations);
  if (g.has_error()) return g.error();
  return Run(*g, Pass::kBackwardWeights, x.untyped_data(), dw->untyped_data(),
             dy.untyped_data());
}

const char* IsaName(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2_vnni_2: return "avx2_vnni_2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_fp16: return "avx512_core_fp16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "default";
  }
}

}  // namespace

// The instruction set oneDNN dispatches to on this CPU (after
// ONEDNN_MAX_CPU_ISA), e.g. "avx2", "avx512_core_amx".
extern "C" const char* CnnOnednnCpuIsa() {
  return IsaName(dnnl::get_effective_cpu_isa());
}

// Runs one pass (0 forward, 1 backward data, 2 backward weights) with the
// custom calls' conventions: dims of x [N, *sp, C], w [*win, C, O] and
// y [N, *out_sp, O], `spatial` entries per attribute; `activation` is x (dx
// for backward data), `other` is y (dy). dtype: 0 float32, 1 bfloat16,
// 2 bfloat16 operands with a float32 result.
// Returns 0, or 1 with oneDNN's message in `message`.
extern "C" int CnnOnednnRunPass(int pass, int dtype, int spatial,
                                const int64_t* x, const int64_t* w,
                                const int64_t* y, const int64_t* strides,
                                const int64_t* pads_lo, const int64_t* pads_hi,
                                const int64_t* dilations, void* activation,
                                void* weights, void* other, char* message,
                                size_t message_size) {
  const size_t rank = static_cast<size_t>(spatial) + 2;
  const size_t n = static_cast<size_t>(spatial);
  auto g = MakeGeometry(dtype == 0 ? ffi::DataType::F32 : ffi::DataType::BF16,
                        dtype == 1 ? ffi::DataType::BF16 : ffi::DataType::F32,
                        {x, rank}, {w, rank}, {y, rank}, {strides, n},
                        {pads_lo, n}, {pads_hi, n}, {dilations, n});
  ffi::Error error = g.has_error()
                         ? g.error()
                         : Run(*g, static_cast<Pass>(pass), activation,
                               weights, other);
  if (error.success()) return 0;
  std::snprintf(message, message_size, "%s", error.message().c_str());
  return 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnOnednnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                      CNN_BIND_GEOMETRY_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnOnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                      CNN_BIND_GEOMETRY_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnOnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                      CNN_BIND_GEOMETRY_ATTRS);

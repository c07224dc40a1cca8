// oneDNN matrix products as an XLA:CPU custom call (jax.ffi), for
// cnn_jax/conv/onednn_dense.py: the dense layers of a network whose
// matmul precision is bfloat16.
//
// Why: XLA:CPU multiplies float32 whatever JAX's matmul precision says,
// and its bfloat16 dots are slower than its float32 ones. oneDNN's bfloat16
// matmul (bf16 dot-product instructions, float32 sums) ran the MNIST CNN's
// 3136->256 layer's three products in 3.9 ms against 8.6 ms in float32
// (batch 256, 2-core AMD EPYC Zen 4, through PyTorch's oneDNN).
//
//   cnn_onednn_matmul (a, b) -> c,   c = op(a) op(b)
// op(t) is t, or t with its last two dims swapped where the attribute
// transpose_a / transpose_b is 1, so the three products of a dense layer
// (y = x w, dx = dy w^T, dw = x^T dy) need no transposed copies. Rank 2, or
// 3 with a leading batch dim that an operand may broadcast (size 1). The
// operands share a dtype, float32 or bfloat16; the result has it too, or
// is float32 for bfloat16 operands (float32 sums returned unrounded).
//
// Primitives are built once per shape and cached; their scratch memory
// lives in a per-thread buffer, so two XLA threads may multiply at once.

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Dims = memory::dims;

struct Product {
  memory::desc a, b, c;

  std::string Key() const {
    std::string key;
    for (const memory::desc* d : {&a, &b, &c}) {
      key += std::to_string(static_cast<int>(d->get_data_type())) + ":";
      for (auto v : d->get_dims()) key += std::to_string(v) + ",";
      for (auto v : d->get_strides()) key += std::to_string(v) + ",";
      key += "|";
    }
    return key;
  }
};

struct Compiled {
  dnnl::matmul primitive;
  size_t scratch_bytes;
};

Compiled Build(const Product& p) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::matmul::primitive_desc pd(cnn_onednn::Engine(), p.a, p.b, p.c, attr);
  return {dnnl::matmul(pd), pd.scratchpad_desc().get_size()};
}

const Compiled& Get(const Product& p) {
  static std::mutex mu;
  static auto* cache =
      new std::unordered_map<std::string, std::unique_ptr<Compiled>>();
  const std::string key = p.Key();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<Compiled>(Build(p))).first;
  }
  return *it->second;
}

ffi::ErrorOr<memory::data_type> OnednnType(ffi::DataType dtype) {
  if (dtype == ffi::DataType::F32) return memory::data_type::f32;
  if (dtype == ffi::DataType::BF16) return memory::data_type::bf16;
  return ffi::Unexpected<ffi::Error>(
      ffi::Error::InvalidArgument("oneDNN matmul: dtype must be f32 or bf16"));
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("oneDNN matmul: " + what);
}

// The logical dims [batch, rows, cols] of op(t) and the strides that read
// them from t's row-major storage.
memory::desc Operand(ffi::Span<const int64_t> dims, bool transpose,
                     memory::data_type type) {
  const size_t r = dims.size();
  const int64_t rows = dims[r - 2], cols = dims[r - 1];
  Dims logical = {transpose ? cols : rows, transpose ? rows : cols};
  Dims strides = {transpose ? 1 : cols, transpose ? cols : 1};
  if (r == 3) {
    logical.insert(logical.begin(), dims[0]);
    strides.insert(strides.begin(), rows * cols);
  }
  return memory::desc(logical, type, strides);
}

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b,
                  ffi::Result<ffi::AnyBuffer> c, int64_t transpose_a,
                  int64_t transpose_b) {
  if (a.element_type() != b.element_type()) {
    return Invalid("operands differ in dtype");
  }
  auto in = OnednnType(a.element_type());
  if (in.has_error()) return in.error();
  auto out = OnednnType(c->element_type());
  if (out.has_error()) return out.error();
  if (*in != *out && *in != memory::data_type::bf16) {
    return Invalid("the result must have the operands' dtype, or f32 for "
                   "bf16 operands");
  }
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  const size_t r = cd.size();
  if ((r != 2 && r != 3) || ad.size() != r || bd.size() != r) {
    return Invalid("operands and result need rank 2, or 3 with a batch dim");
  }
  Product p{Operand(ad, transpose_a != 0, *in),
            Operand(bd, transpose_b != 0, *in), {}};
  const Dims la = p.a.get_dims(), lb = p.b.get_dims();
  if (la[r - 1] != lb[r - 2] || cd[r - 2] != la[r - 2] ||
      cd[r - 1] != lb[r - 1] ||
      (r == 3 && ((la[0] != cd[0] && la[0] != 1) ||
                  (lb[0] != cd[0] && lb[0] != 1)))) {
    return Invalid("shapes do not multiply");
  }
  p.c = memory::desc(Dims(cd.begin(), cd.end()), *out,
                     r == 2 ? memory::format_tag::ab : memory::format_tag::abc);
  try {
    const Compiled& k = Get(p);
    auto& engine = cnn_onednn::Engine();
    dnnl::stream& stream = cnn_onednn::Stream();
    k.primitive.execute(
        stream, {{DNNL_ARG_SRC, memory(p.a, engine, a.untyped_data())},
                 {DNNL_ARG_WEIGHTS, memory(p.b, engine, b.untyped_data())},
                 {DNNL_ARG_DST, memory(p.c, engine, c->untyped_data())},
                 {DNNL_ARG_SCRATCHPAD, cnn_onednn::Scratchpad(k.scratch_bytes)}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b"));

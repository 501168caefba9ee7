// decode_layers: a whole decode step through the layers of a Llama-family model (Llama, Mistral, Qwen2 with
// its q/k/v bias, Qwen3 with its q/k norms), as one call, for any number of streams. Why: a 30-layer step
// makes ~400 kernel calls; issued from Python they cost ~15 us each (~6 ms per token for SmolLM2-135M, whose
// weights stream in ~3 ms). See models/fast_decode.py for the Python side.
//
// Each linear layer is described by a kind and four tensor slots, and runs the kernel Python's
// `ops.linear` / `ops.quant_linear` would pick for the same number of rows (so both paths give the same bits):
// Slots: [weight or q, scales, mins, bias, oneDNN-prepacked bf16 weight]; absent ones are None.
//   kind 0, bf16: ours up to row_limits[0] rows, else oneDNN (on the prepacked copy if there is one);
//   kind 1, int8: ours up to row_limits[1] rows, else oneDNN on the prepacked copy or the expanded weight;
//   kind 2, int4 (with a group size): the same with row_limits[2].
#include "kernels.h"
#include <ATen/core/dispatch/Dispatcher.h>

namespace {

constexpr size_t kSlots = 5;    // tensor slots per linear
constexpr size_t kLinears = 4;  // qkv, o, gate|up, down
constexpr size_t kNorms = 4;    // input, q_norm?, k_norm?, post-attention

torch::Tensor onednn_linear(const torch::Tensor& x, const torch::Tensor& packed, const c10::optional<torch::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::string_view, c10::List<std::optional<at::Scalar>>,
                                         std::optional<c10::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<std::optional<at::Scalar>>(), c10::string_view(""));
}

bool present(const c10::optional<torch::Tensor>& t) { return t.has_value() && t->defined(); }

torch::Tensor apply_linear(const torch::Tensor& x, const c10::optional<torch::Tensor>* t, int64_t kind, int64_t group,
                           const std::vector<int64_t>& limits) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "decode_layers: unknown linear kind ", kind);
  const auto& bias = t[3];
  if (x.size(0) <= limits[kind]) {
    if (kind == 0) return bf16_linear(x, *t[0], bias);
    if (kind == 1) return int8_linear(x, *t[0], *t[1], bias);
    return int4_linear(x, *t[0], *t[1], *t[2], group, bias);
  }
  if (present(t[4])) return onednn_linear(x, *t[4], bias);
  if (kind == 0) return at::linear(x, *t[0], bias);
  if (kind == 1) return at::linear(x, int8_dequantize(*t[0], *t[1]), bias);
  return at::linear(x, int4_dequantize(*t[0], *t[1], *t[2], group), bias);
}

}  // namespace

// norms: per layer [input_norm, q_norm?, k_norm?, post_attn_norm]; linears: per layer 4 x 4 slots (see above);
// kinds: per layer (kind, group) for each linear; eps: per layer (input, post-attention, q/k norm).
torch::Tensor decode_layers(torch::Tensor x, const std::vector<c10::optional<torch::Tensor>>& norms,
                            const std::vector<c10::optional<torch::Tensor>>& linears,
                            const std::vector<int64_t>& kinds, const std::vector<int64_t>& row_limits,
                            const std::vector<double>& eps, const std::vector<torch::Tensor>& k_caches,
                            const std::vector<torch::Tensor>& v_caches, torch::Tensor slots, torch::Tensor cos,
                            torch::Tensor sin, torch::Tensor block_tables, torch::Tensor context_lens,
                            int64_t heads, int64_t kv_heads, int64_t head_dim, double scale,
                            torch::Tensor final_norm, double final_eps) {
  const size_t layers = k_caches.size();
  TORCH_CHECK(norms.size() == layers * kNorms && linears.size() == layers * kLinears * kSlots &&
                  kinds.size() == layers * kLinears * 2 && eps.size() == 3 * layers && v_caches.size() == layers &&
                  row_limits.size() == 3,
              "decode_layers: norms/linears/kinds/eps/caches do not describe the same number of layers");
  const int64_t T = x.size(0), q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  const int64_t qk_width = q_width + kv_width;
  torch::Tensor pending;  // the last MLP output, added to the residual stream by the next norm
  for (size_t l = 0; l < layers; ++l) {
    const auto* nw = &norms[l * kNorms];
    const auto* lin = &linears[l * kLinears * kSlots];
    const int64_t* kd = &kinds[l * kLinears * 2];
    torch::Tensor h;
    if (!pending.defined()) {
      h = rms_norm(x, c10::nullopt, *nw[0], eps[3 * l])[0];
    } else {
      auto r = rms_norm(pending, x, *nw[0], eps[3 * l]);
      h = r[0];
      x = r[1];
    }
    auto qkv = apply_linear(h, lin, kd[0], kd[1], row_limits);
    torch::Tensor qk = qkv.narrow(1, 0, qk_width).view({T, heads + kv_heads, head_dim});
    if (nw[1].has_value() && nw[1]->defined()) {  // Qwen3: RMSNorm over each q and k head before the rotation
      auto q = rms_norm(qkv.narrow(1, 0, q_width).reshape({T, heads, head_dim}), c10::nullopt, *nw[1], eps[3 * l + 2])[0];
      auto k = rms_norm(qkv.narrow(1, q_width, kv_width).reshape({T, kv_heads, head_dim}), c10::nullopt, *nw[2],
                        eps[3 * l + 2])[0];
      qk = torch::cat({q, k}, 1);
    }
    qk = rope(qk, cos, sin);
    k_caches[l].view({-1, kv_heads, head_dim}).index_copy_(0, slots, qk.narrow(1, heads, kv_heads));
    v_caches[l].view({-1, kv_heads, head_dim}).index_copy_(0, slots,
                                                          qkv.narrow(1, qk_width, kv_width).view({T, kv_heads, head_dim}));
    auto o = paged_decode_attention(qk.narrow(1, 0, heads), k_caches[l], v_caches[l], block_tables, context_lens, scale);
    auto r2 = rms_norm(apply_linear(o.view({T, q_width}), lin + kSlots, kd[2], kd[3], row_limits), x, *nw[3],
                       eps[3 * l + 1]);
    x = r2[1];
    auto up = apply_linear(r2[0], lin + 2 * kSlots, kd[4], kd[5], row_limits);
    pending = apply_linear(silu_mul(up), lin + 3 * kSlots, kd[6], kd[7], row_limits);
  }
  return rms_norm(pending, x, final_norm, final_eps)[0];
}

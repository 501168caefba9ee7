// decode_layers: a whole decode step through the layers of a Llama-family model (Llama, Mistral, Qwen2 with
// its q/k/v bias, Qwen3 with its q/k norms), as one call, for any number of streams. Why: a 30-layer step
// makes ~400 kernel calls; issued from Python they cost ~15 us each (~6 ms per token for SmolLM2-135M, whose
// weights stream in ~3 ms). See models/fast_decode.py for the Python side.
//
// Each linear layer is described by a kind and four tensor slots, and runs the kernel Python's
// `ops.linear` / `ops.quant_linear` would pick for the same number of rows (so both paths give the same bits):
// Slots: [weight or q, scales, mins, bias, oneDNN-prepacked bf16 weight, 16-row-interleaved int8 / int4 copy]; absent
// ones are None.
//   kind 0, bf16: ours up to the layer's row limit, else oneDNN (on the prepacked copy if there is one);
//   kind 1, int8: ours up to its row limit, else oneDNN on the prepacked copy or the expanded weight;
//   kind 2, int4 (with a group size): the same;
//   kind 3, int4 whose minimums are -8 x its scales (GGUF's Q4_0): kind 2, but the one-row VNNI kernel folds
//   the minimum into its integer sums and never reads the mins (2 fewer bytes per 32 weights to stream).
#include "kernels.h"
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <omp.h>
#include <algorithm>
#include <cstring>

namespace {

constexpr size_t kSlots = 6;    // tensor slots per linear
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
                           int64_t row_limit) {
  TORCH_CHECK(kind >= 0 && kind <= 3, "decode_layers: unknown linear kind ", kind);
  const bool sym8 = kind == 3;
  if (sym8) kind = 2;
  const auto& bias = t[3];
  if (x.size(0) <= row_limit) {
    if (kind == 0) return bf16_linear(x, *t[0], bias);
    if (kind == 1) return int8_linear(x, *t[0], *t[1], bias, t[5]);
    return int4_linear(x, *t[0], *t[1], *t[2], group, bias, sym8, t[5]);
  }
  if (present(t[4])) return onednn_linear(x, *t[4], bias);
  if (kind == 0) return at::linear(x, *t[0], bias);
  if (kind == 1) return at::linear(x, int8_dequantize(*t[0], *t[1]), bias);
  return at::linear(x, int4_dequantize(*t[0], *t[1], *t[2], group), bias);
}

const uint16_t* u16(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* u16(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// Rows [n0, n1) of thread `tid` of `threads` for an N-row layer: whole 32-row tiles, as the kernels split them.
std::pair<int64_t, int64_t> row_range(int64_t N, int64_t tid, int64_t threads) {
  const int64_t tiles = (N + 31) / 32;
  return {std::min(N, tiles * tid / threads * 32), std::min(N, tiles * (tid + 1) / threads * 32)};
}

// One stream (T = 1): the whole step in one parallel region. Each op of a layer is split across the threads
// (matmul rows in whole tiles, attention in the same token chunks paged_decode_attention uses) or, where it is
// a few hundred values (norms, rotary, SwiGLU, merging the attention chunks), computed by every thread into its
// own buffer: six barriers per layer and no allocation, dispatch or thread start-up in between. Each piece is
// the function the general path calls, so the result is the same bits.
torch::Tensor decode_one(torch::Tensor x, const std::vector<c10::optional<torch::Tensor>>& norms,
                         const std::vector<c10::optional<torch::Tensor>>& linears, const std::vector<int64_t>& kinds,
                         const std::vector<double>& eps, const std::vector<torch::Tensor>& k_caches,
                         const std::vector<torch::Tensor>& v_caches, int64_t slot, const torch::Tensor& cos,
                         const torch::Tensor& sin, const torch::Tensor& block_table, int64_t context_len, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, double scale, const torch::Tensor& final_norm,
                         double final_eps) {
  const int64_t layers = static_cast<int64_t>(k_caches.size()), H = x.size(1), D = head_dim;
  const int64_t q_width = heads * D, kv_width = kv_heads * D, qk_width = q_width + kv_width;
  const int64_t bs = k_caches[0].size(1);
  // Resolve every linear layer to raw pointers (and quantized layers' biases to fp32) before the threads start.
  std::vector<LinearRow> plans(layers * kLinears);
  std::vector<torch::Tensor> keep;  // converted biases, alive until the end
  int64_t imax = 0;
  for (int64_t l = 0; l < layers; ++l) {
    for (size_t j = 0; j < kLinears; ++j) {
      const auto* t = &linears[(l * kLinears + j) * kSlots];
      LinearRow& p = plans[l * kLinears + j];
      p.kind = kinds[(l * kLinears + j) * 2];
      p.G = kinds[(l * kLinears + j) * 2 + 1];
      TORCH_CHECK(p.kind >= 0 && p.kind <= 3, "decode_layers: unknown linear kind ", p.kind);
      if (p.kind == 3) p.kind = 2, p.sym8 = true;
      const torch::Tensor& w = *t[0];
      TORCH_CHECK(w.is_contiguous(), "decode_layers: weights must be contiguous");
      p.N = w.size(0);
      p.K = p.kind == 2 ? 2 * w.size(1) : w.size(1);
      p.w = w.data_ptr();
      if (p.kind != 0) {
        p.scales = t[1]->data_ptr();
        p.scale_type = t[1]->scalar_type();
        if (p.kind == 1 && t[1]->dim() == 1) p.G = p.K;  // one scale per row
        if (p.kind == 2) p.mins = t[2]->data_ptr();
        set_interleaved(p, t[5]);
      }
      if (present(t[3])) {
        if (p.kind == 0) {
          keep.push_back(t[3]->to(at::kBFloat16).contiguous());
          p.bias_bf16 = keep.back().data_ptr<at::BFloat16>();
        } else {
          keep.push_back(t[3]->to(at::kFloat).contiguous());
          p.bias_f32 = keep.back().data_ptr<float>();
        }
      }
      if (j == 2) imax = std::max(imax, p.N);
    }
  }
  auto opts = x.options();
  auto out = torch::empty({1, H}, opts);
  auto qkv = torch::empty({qk_width + kv_width}, opts);
  auto attn = torch::empty({q_width}, opts);
  auto o = torch::empty({H}, opts);
  auto up = torch::empty({imax}, opts);
  auto pending = torch::empty({H}, opts);
  const int64_t threads = at::get_num_threads();
  const int64_t splits = decode_attention_splits(1, threads);
  std::vector<float> part_m(splits * heads, -INFINITY), part_s(splits * heads, 0.f), part_a(splits * heads * D);
  const int64_t* table = block_table.data_ptr<int64_t>();
  const auto* cp = u16(cos);
  const auto* sp = u16(sin);
  const float fscale = static_cast<float>(scale);
  std::vector<const uint16_t*> kc(layers), vc(layers);
  std::vector<uint16_t*> kw(layers), vw(layers);
  for (int64_t l = 0; l < layers; ++l) {
    kc[l] = u16(k_caches[l]);
    vc[l] = u16(v_caches[l]);
    kw[l] = const_cast<uint16_t*>(kc[l]) + slot * kv_width;
    vw[l] = const_cast<uint16_t*>(vc[l]) + slot * kv_width;
  }
  const auto* x0 = u16(x);
  auto* qkvp = u16(qkv);
  auto* attnp = u16(attn);
  auto* op = u16(o);
  auto* upp = u16(up);
  auto* pendp = u16(pending);

#pragma omp parallel num_threads(threads)
  {
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
    // Per thread: the residual stream, the normed input, rotated q|k, SwiGLU output, kernel scratch.
    std::vector<uint16_t> xs(x0, x0 + H), h(H), qk(qk_width), act(imax);
    RowScratch scratch;
    std::vector<float> scores;
    std::vector<const uint16_t*> vrow;
    auto linear = [&](const LinearRow& p, const uint16_t* in, uint16_t* y) {
      linear_row_prepare(p, in, scratch);
      const auto [n0, n1] = row_range(p.N, tid, nt);
      if (n0 < n1) linear_row_compute(p, in, scratch, y, n0, n1);
    };
    for (int64_t l = 0; l < layers; ++l) {
      const auto* nw = &norms[l * kNorms];
      const LinearRow* pl = &plans[l * kLinears];
      if (l == 0) rms_norm_row(xs.data(), nullptr, u16(*nw[0]), H, static_cast<float>(eps[3 * l]), h.data(), nullptr);
      else rms_norm_row(pendp, xs.data(), u16(*nw[0]), H, static_cast<float>(eps[3 * l]), h.data(), xs.data());
      linear(pl[0], h.data(), qkvp);
#pragma omp barrier
      const uint16_t* qk_src = qkvp;
      if (present(nw[1])) {  // Qwen3: RMSNorm over each q and k head before the rotation
        const float qe = static_cast<float>(eps[3 * l + 2]);
        for (int64_t i = 0; i < heads; ++i) rms_norm_row(qkvp + i * D, nullptr, u16(*nw[1]), D, qe, qk.data() + i * D, nullptr);
        for (int64_t i = 0; i < kv_heads; ++i)
          rms_norm_row(qkvp + q_width + i * D, nullptr, u16(*nw[2]), D, qe, qk.data() + q_width + i * D, nullptr);
        qk_src = qk.data();
      }
      rope_row(qk_src, heads + kv_heads, D, cp, sp, qk.data());  // in place is fine: each pair is read, then written
      if (tid == 0) {
        std::memcpy(kw[l], qk.data() + q_width, kv_width * sizeof(uint16_t));
        std::memcpy(vw[l], qkvp + qk_width, kv_width * sizeof(uint16_t));
      }
#pragma omp barrier
      for (int64_t c = tid; c < splits; c += nt) {
        const int64_t chunk = (context_len + splits - 1) / splits;
        const int64_t t0 = c * chunk, t1 = std::min(context_len, t0 + chunk);
        if (t1 > t0)
          decode_attention_chunk(qk.data(), kc[l], vc[l], table, bs, t0, t1, heads, kv_heads, D, fscale,
                                 part_m.data() + c * heads, part_s.data() + c * heads, part_a.data() + c * heads * D,
                                 scores, vrow);
        else {  // an empty chunk, as paged_decode_attention leaves it: no max, no mass
          std::fill(part_m.begin() + c * heads, part_m.begin() + (c + 1) * heads, -INFINITY);
          std::fill(part_s.begin() + c * heads, part_s.begin() + (c + 1) * heads, 0.f);
        }
      }
#pragma omp barrier
      if (tid == 0) decode_attention_merge(part_m.data(), part_s.data(), part_a.data(), splits, heads, D,
                                           reinterpret_cast<at::BFloat16*>(attnp));
#pragma omp barrier
      linear(pl[1], attnp, op);
#pragma omp barrier
      rms_norm_row(op, xs.data(), u16(*nw[3]), H, static_cast<float>(eps[3 * l + 1]), h.data(), xs.data());
      linear(pl[2], h.data(), upp);
#pragma omp barrier
      silu_mul_row(upp, pl[2].N / 2, act.data());
      linear(pl[3], act.data(), pendp);
#pragma omp barrier
    }
    if (tid == 0) rms_norm_row(pendp, xs.data(), u16(final_norm), H, static_cast<float>(final_eps), u16(out), xs.data());
  }
  return out;
}

}  // namespace

// norms: per layer [input_norm, q_norm?, k_norm?, post_attn_norm]; linears: per layer 4 x 4 slots (see above);
// kinds: per layer (kind, group) for each linear; row_limits: per linear, the most rows our kernels take (see
// QuantLinear.native_rows); eps: per layer (input, post-attention, q/k norm).
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
                  row_limits.size() == layers * kLinears,
              "decode_layers: norms/linears/kinds/eps/caches do not describe the same number of layers");
  const int64_t T = x.size(0), q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  const int64_t qk_width = q_width + kv_width;
  if (T == 1 && x.is_contiguous() && !at::in_parallel_region()) {
    auto tables = block_tables.to(at::kLong).contiguous();
    return decode_one(x, norms, linears, kinds, eps, k_caches, v_caches, slots.item<int64_t>(), cos.reshape({-1}).contiguous(),
                      sin.reshape({-1}).contiguous(), tables, context_lens.item<int64_t>(), heads, kv_heads, head_dim,
                      scale, final_norm.contiguous(), final_eps);
  }
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
    const int64_t* rl = &row_limits[l * kLinears];
    auto qkv = apply_linear(h, lin, kd[0], kd[1], rl[0]);
    torch::Tensor qk = qkv.narrow(1, 0, qk_width).view({T, heads + kv_heads, head_dim});
    if (nw[1].has_value() && nw[1]->defined()) {  // Qwen3: RMSNorm over each q and k head before the rotation
      auto q = rms_norm(qkv.narrow(1, 0, q_width).reshape({T, heads, head_dim}), c10::nullopt, *nw[1], eps[3 * l + 2])[0];
      auto k = rms_norm(qkv.narrow(1, q_width, kv_width).reshape({T, kv_heads, head_dim}), c10::nullopt, *nw[2],
                        eps[3 * l + 2])[0];
      qk = torch::cat({q, k}, 1);
    }
    qk = rope(qk, cos, sin);
    write_kv(k_caches[l], v_caches[l], qk.narrow(1, heads, kv_heads),
             qkv.narrow(1, qk_width, kv_width).view({T, kv_heads, head_dim}), slots);
    auto o = paged_decode_attention(qk.narrow(1, 0, heads), k_caches[l], v_caches[l], block_tables, context_lens, scale);
    auto r2 = rms_norm(apply_linear(o.view({T, q_width}), lin + kSlots, kd[2], kd[3], rl[1]), x, *nw[3],
                       eps[3 * l + 1]);
    x = r2[1];
    auto up = apply_linear(r2[0], lin + 2 * kSlots, kd[4], kd[5], rl[2]);
    pending = apply_linear(silu_mul(up), lin + 3 * kSlots, kd[6], kd[7], rl[3]);
  }
  return rms_norm(pending, x, final_norm, final_eps)[0];
}

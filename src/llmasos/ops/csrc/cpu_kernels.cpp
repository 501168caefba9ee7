// CPU kernels for bf16 inference on CPUs with AVX512-BF16 (fp32 accumulation throughout).
//
// bf16_linear: y = x @ w.T (+ bias) for small batches. Why: in PyTorch's CPU build the oneDNN bf16 matmul costs the same ~8 ms for a 1024x6144 weight whether
// the batch has 1 row or 64 (it re-lays the weight out on every call), so decoding - which multiplies a
// few rows by every weight matrix - runs at ~1.6 GB/s instead of the memory bandwidth. This kernel streams
// each weight row once per group of input rows and is bandwidth-bound for small batches.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRowsM = 4;   // input rows sharing one pass over a weight row
constexpr int64_t kRowsN = 4;   // weight rows per inner step: more independent accumulator chains
constexpr int64_t kTileN = 32;  // weight rows per parallel task; the tile stays in L1/L2 across row groups

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// MC input rows x NC weight rows, with compile-time bounds so every accumulator lives in a register.
template <int MC, int NC>
inline void micro(const uint16_t* x, const uint16_t* w, const at::BFloat16* bias, at::BFloat16* y, int64_t K,
                  int64_t N, int64_t m0, int64_t n, int64_t prefetch_row) {
  const int64_t kv = K - K % 32;
  __m512 acc[MC][NC];
  for (int i = 0; i < MC; ++i)
    for (int j = 0; j < NC; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kv; k += 32) {
    __m512bh wv[NC];
    for (int j = 0; j < NC; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + (n + j) * K + k);
    // Start fetching the next row group now: with few input rows the loop is bound by memory latency.
    if (prefetch_row >= 0)
      for (int j = 0; j < NC; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + (prefetch_row + j) * K + k), _MM_HINT_T0);
    for (int i = 0; i < MC; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + i) * K + k);
      for (int j = 0; j < NC; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MC; ++i) {
    for (int j = 0; j < NC; ++j) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      for (int64_t k = kv; k < K; ++k) s += bf16_to_float(x[(m0 + i) * K + k]) * bf16_to_float(w[(n + j) * K + k]);
      if (bias) s += static_cast<float>(bias[n + j]);
      y[(m0 + i) * N + n + j] = at::BFloat16(s);  // round to nearest even
    }
  }
}

template <int NC>
inline void micro_m(int64_t mc, const uint16_t* x, const uint16_t* w, const at::BFloat16* bias, at::BFloat16* y,
                    int64_t K, int64_t N, int64_t m0, int64_t n, int64_t prefetch_row) {
  switch (mc) {
    case 1: micro<1, NC>(x, w, bias, y, K, N, m0, n, prefetch_row); break;
    case 2: micro<2, NC>(x, w, bias, y, K, N, m0, n, prefetch_row); break;
    case 3: micro<3, NC>(x, w, bias, y, K, N, m0, n, prefetch_row); break;
    default: micro<4, NC>(x, w, bias, y, K, N, m0, n, prefetch_row); break;
  }
}

void tile(const uint16_t* x, const uint16_t* w, const at::BFloat16* bias, at::BFloat16* y, int64_t M, int64_t K,
          int64_t N, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < M; m0 += kRowsM) {
    const int64_t mc = std::min(kRowsM, M - m0);
    int64_t n = n0;
    for (; n + kRowsN <= n1; n += kRowsN) {
      const int64_t next = (m0 == 0 && n + 2 * kRowsN <= N) ? n + kRowsN : -1;
      micro_m<kRowsN>(mc, x, w, bias, y, K, N, m0, n, next);
    }
    for (; n < n1; ++n) micro_m<1>(mc, x, w, bias, y, K, N, m0, n, -1);
  }
}

}  // namespace

torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "bf16 tensors expected");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "shape mismatch");
  x = x.contiguous();
  w = w.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const at::BFloat16* b = nullptr;
  torch::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->to(at::kBFloat16).contiguous();
    b = bc.data_ptr<at::BFloat16>();
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  auto* yp = y.data_ptr<at::BFloat16>();
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) tile(xp, wp, b, yp, M, K, N, t * kTileN, std::min(N, (t + 1) * kTileN));
  });
  return y;
}

// paged_decode_attention: one query token per sequence attends to its cached K/V, read straight from the
// block pool. Why: the torch route gathers every sequence's blocks into a padded copy before attention,
// which at batch 64 costs more than the attention itself; here each K/V row is read once, where it lies.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_cache.scalar_type() == at::kBFloat16, "bf16 expected");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4, "q [B, Hq, D], cache [blocks, block_size, Hkv, D]");
  q = q.contiguous();
  block_tables = block_tables.to(at::kLong).contiguous();
  context_lens = context_lens.to(at::kLong).contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t bs = k_cache.size(1), Hkv = k_cache.size(2), maxb = block_tables.size(1);
  TORCH_CHECK(k_cache.size(3) == D && D % 32 == 0 && Hq % Hkv == 0, "unsupported head layout");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "cache must be contiguous");
  const int64_t G = Hq / Hkv;
  auto out = torch::empty_like(q);
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* kp = reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>());
  const auto* vp = reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>());
  const int64_t* tp = block_tables.data_ptr<int64_t>();
  const int64_t* lp = context_lens.data_ptr<int64_t>();
  auto* op = out.data_ptr<at::BFloat16>();
  const float fscale = static_cast<float>(scale);
  const int64_t row = Hkv * D;  // elements between consecutive tokens of one block

  // A task is one sequence and a run of its KV heads. Walking all heads of a token together reads each
  // token's K/V row (all heads, contiguous) as one stream, which the prefetcher can follow; per-head walks
  // stride through memory and run latency-bound. Small batches split heads so every core has work.
  const int64_t heads_per_task = B >= 8 ? Hkv : 1;
  const int64_t splits = Hkv / heads_per_task;
  at::parallel_for(0, B * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / splits, h0 = (task % splits) * heads_per_task, L = lp[b];
      const int64_t HG = heads_per_task * G;  // query heads handled by this task
      scores.assign(HG * L, 0.f);
      acc.assign(HG * D, 0.f);
      const uint16_t* qb = qp + (b * Hq + h0 * G) * D;
      // Pass 1: scores.
      for (int64_t t = 0; t < L; ++t) {
        const uint16_t* kt = kp + (tp[b * maxb + t / bs] * bs + t % bs) * row + h0 * D;
        for (int64_t hg = 0; hg < HG; ++hg) {
          const uint16_t* kr = kt + (hg / G) * D;
          const uint16_t* qr = qb + hg * D;
          __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
          int64_t d = 0;
          for (; d + 64 <= D; d += 64) {
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(qr + d), (__m512bh)_mm512_loadu_si512(kr + d));
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(qr + d + 32),
                                  (__m512bh)_mm512_loadu_si512(kr + d + 32));
          }
          if (d < D) a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(qr + d), (__m512bh)_mm512_loadu_si512(kr + d));
          scores[hg * L + t] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * fscale;
        }
      }
      // Softmax per query head, in fp32.
      for (int64_t hg = 0; hg < HG; ++hg) {
        float* s = scores.data() + hg * L;
        float mx = s[0];
        for (int64_t t = 1; t < L; ++t) mx = std::max(mx, s[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < L; ++t) { s[t] = std::exp(s[t] - mx); sum += s[t]; }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < L; ++t) s[t] *= inv;
      }
      // Pass 2: weighted sum of V rows, each read once.
      for (int64_t t = 0; t < L; ++t) {
        const uint16_t* vt = vp + (tp[b * maxb + t / bs] * bs + t % bs) * row + h0 * D;
        for (int64_t hg = 0; hg < HG; ++hg) {
          const uint16_t* vr = vt + (hg / G) * D;
          const __m512 w = _mm512_set1_ps(scores[hg * L + t]);
          float* ad = acc.data() + hg * D;
          for (int64_t d = 0; d < D; d += 16) {
            const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr + d))), 16));
            _mm512_storeu_ps(ad + d, _mm512_fmadd_ps(w, v, _mm512_loadu_ps(ad + d)));
          }
        }
      }
      at::BFloat16* ob = op + (b * Hq + h0 * G) * D;
      for (int64_t i = 0; i < HG * D; ++i) ob[i] = at::BFloat16(acc[i]);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_linear", &bf16_linear, "y = x @ w.T + bias for bf16 (AVX512-BF16)", py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none());
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention over the paged KV cache (bf16)");
}

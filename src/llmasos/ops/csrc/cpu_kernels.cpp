// CPU kernels for bf16 inference on CPUs with AVX512-BF16 (fp32 accumulation throughout).
//
// bf16_linear: y = x @ w.T (+ bias) for small batches. Why: in PyTorch's CPU build the oneDNN bf16 matmul costs the same ~8 ms for a 1024x6144 weight whether
// the batch has 1 row or 64 (it re-lays the weight out on every call), so decoding - which multiplies a
// few rows by every weight matrix - runs at ~1.6 GB/s instead of the memory bandwidth. This kernel streams
// each weight row once per group of input rows and is bandwidth-bound for small batches.
#include "kernels.h"
#include "simd.h"
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <omp.h>
#include <vector>

namespace {

using namespace llmasos_simd;

inline __m512 load_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

inline __m512 load_bf16_from(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

inline __m512 load_bf16_masked(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

constexpr int64_t kTileN = 32;  // weight rows per parallel task (each thread gets a contiguous run of tiles)

// exp(x) for fp32 lanes: 2^n * e^r with |r| <= ln2/2 and a degree-6 polynomial (Cephes' expf
// coefficients), relative error ~1e-7 - far below bf16's resolution.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}


// MC input rows times weight rows n0..n1, one weight row at a time from start to end. Why row by row: each
// thread then reads its weights as one sequential stream, which the hardware prefetcher follows at full
// speed. Interleaving 4 rows (4 streams 2 KB apart, plus software prefetch of the next group) streamed at
// half the bandwidth on the Zen 4 machine we measured (27 vs 50 GB/s with 2 threads, batch 1).
template <int MC>
inline void rows(const uint16_t* x, const uint16_t* w, const at::BFloat16* bias, at::BFloat16* y, int64_t K,
                 int64_t N, int64_t n0, int64_t n1) {
  const int64_t k64 = K - K % 64, k32 = K - K % 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    __m512 acc[MC][2];  // two chains per input row hide the dot-product latency
    for (int i = 0; i < MC; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k < k64; k += 64) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wr + k), w1 = (__m512bh)_mm512_loadu_si512(wr + k + 32);
      for (int i = 0; i < MC; ++i) {
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512(x + i * K + k), w0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)_mm512_loadu_si512(x + i * K + k + 32), w1);
      }
    }
    if (k < k32) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wr + k);
      for (int i = 0; i < MC; ++i)
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512(x + i * K + k), w0);
    }
    for (int i = 0; i < MC; ++i) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
      for (int64_t t = k32; t < K; ++t) s += bf16_to_float(x[i * K + t]) * bf16_to_float(wr[t]);
      if (bias) s += static_cast<float>(bias[n]);
      y[i * N + n] = at::BFloat16(s);  // round to nearest even
    }
  }
}

void tile(const uint16_t* x, const uint16_t* w, const at::BFloat16* bias, at::BFloat16* y, int64_t M, int64_t K,
          int64_t N, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const uint16_t* xm = x + m0 * K;
    at::BFloat16* ym = y + m0 * N;
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: rows<1>(xm, w, bias, ym, K, N, n0, n1); break;
      case 2: rows<2>(xm, w, bias, ym, K, N, n0, n1); break;
      case 3: rows<3>(xm, w, bias, ym, K, N, n0, n1); break;
      default: rows<4>(xm, w, bias, ym, K, N, n0, n1); break;
    }
  }
}

}  // namespace

void bf16_linear_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, const at::BFloat16* bias,
                      at::BFloat16* y, int64_t N, int64_t n0, int64_t n1) {
  tile(x, w, bias, y, M, K, N, n0, n1);
}

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

namespace {

// q . k over D (a multiple of 32) as 16 partial sums; the caller reduces.
inline __m512 dot_bf16(const uint16_t* q, const uint16_t* k, int64_t D) {
  __m512 a = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 32)
    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(k + d));
  return a;
}

// Lane i of the result = the sum of v[i]'s 16 lanes (a transpose-add: 45 shuffles/adds for 16 sums).
inline __m512 reduce16(const __m512* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// out[g][:] = sum_t P[t][h + g] * V_t[off : off + DV * 16] for GC heads sharing one KV head.
template <int DV, int GC>
inline void weighted_v_block(const uint16_t* const* vrow, int64_t n, int64_t off, const float* P, int64_t Hq,
                             int64_t h, int64_t D, float* out) {
  __m512 acc[GC][DV];
  for (int g = 0; g < GC; ++g)
    for (int c = 0; c < DV; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    __m512 v[DV];
    for (int c = 0; c < DV; ++c) v[c] = load_bf16(vrow[t] + off + c * 16);
    for (int g = 0; g < GC; ++g) {
      const __m512 w = _mm512_set1_ps(P[t * Hq + h + g]);
      for (int c = 0; c < DV; ++c) acc[g][c] = _mm512_fmadd_ps(w, v[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GC; ++g)
    for (int c = 0; c < DV; ++c) _mm512_storeu_ps(out + g * D + c * 16, acc[g][c]);
}

void weighted_v(const uint16_t* const* vrow, int64_t n, int64_t off, const float* P, int64_t Hq, int64_t h,
                int64_t gc, int64_t D, float* out) {
  for (int64_t d0 = 0; d0 < D; d0 += 128) {  // column passes of up to 128 keep the accumulators in registers
    const int64_t dv = std::min<int64_t>(128, D - d0) / 16;
    const int64_t o = off + d0;
    float* od = out + d0;
    switch (dv * 2 + (gc == 2)) {
      case 4: weighted_v_block<2, 1>(vrow, n, o, P, Hq, h, D, od); break;
      case 5: weighted_v_block<2, 2>(vrow, n, o, P, Hq, h, D, od); break;
      case 8: weighted_v_block<4, 1>(vrow, n, o, P, Hq, h, D, od); break;
      case 9: weighted_v_block<4, 2>(vrow, n, o, P, Hq, h, D, od); break;
      case 12: weighted_v_block<6, 1>(vrow, n, o, P, Hq, h, D, od); break;
      case 13: weighted_v_block<6, 2>(vrow, n, o, P, Hq, h, D, od); break;
      case 16: weighted_v_block<8, 1>(vrow, n, o, P, Hq, h, D, od); break;
      default: weighted_v_block<8, 2>(vrow, n, o, P, Hq, h, D, od); break;
    }
  }
}

}  // namespace

// One sequence's tokens [t0, t1) for all query heads (see paged_decode_attention): per head the chunk's max
// score pm, exp-sum ps and unnormalised weighted V sum pa [Hq, D]. `table` is the sequence's block table.
void decode_attention_chunk(const uint16_t* qb, const uint16_t* kp, const uint16_t* vp, const int64_t* table,
                            int64_t bs, int64_t t0, int64_t t1, int64_t Hq, int64_t Hkv, int64_t D, float fscale,
                            float* pm, float* ps, float* pa, std::vector<float>& scores,
                            std::vector<const uint16_t*>& vrow) {
  const int64_t n = t1 - t0, G = Hq / Hkv, row = Hkv * D;  // row: elements between consecutive tokens of a block
  scores.resize(Hq * n);  // token-major: [t][head]
  vrow.resize(n);
  // Pass 1: scores, 16 heads at a time reduced together (one 16x16 transpose-add instead of 16 horizontal sums).
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t slot = table[t / bs] * bs + t % bs;
    const uint16_t* kt = kp + slot * row;
    vrow[t - t0] = vp + slot * row;
    // Pass 2 walks V one KV head at a time (a strided walk): fetch this token's V row into L2 now, while pass 1
    // streams through K.
    for (int64_t e = 0; e < row; e += 32) _mm_prefetch(reinterpret_cast<const char*>(vrow[t - t0] + e), _MM_HINT_T1);
    float* st = scores.data() + (t - t0) * Hq;
    int64_t h = 0;
    for (; h + 16 <= Hq; h += 16) {
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = dot_bf16(qb + (h + i) * D, kt + ((h + i) / G) * D, D);
      _mm512_storeu_ps(st + h, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(fscale)));
    }
    for (; h < Hq; ++h) st[h] = _mm512_reduce_add_ps(dot_bf16(qb + h * D, kt + (h / G) * D, D)) * fscale;
  }
  // Exponentiate against this chunk's max, 16 heads per vector, in fp32.
  for (int64_t h0 = 0; h0 < Hq; h0 += 16) {
    const __mmask16 mk = Hq - h0 >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (Hq - h0)) - 1);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; ++i) mx = _mm512_max_ps(mx, _mm512_maskz_loadu_ps(mk, scores.data() + i * Hq + h0));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      float* si = scores.data() + i * Hq + h0;
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, si), mx));
      _mm512_mask_storeu_ps(si, mk, e);
      sum = _mm512_add_ps(sum, e);
    }
    _mm512_mask_storeu_ps(pm + h0, mk, mx);
    _mm512_mask_storeu_ps(ps + h0, mk, sum);
  }
  // Pass 2: per KV head, the weighted sum of its V rows for its query heads, accumulated in registers.
  for (int64_t hk = 0; hk < Hkv; ++hk)
    for (int64_t g = 0; g < G; g += 2)
      weighted_v(vrow.data(), n, hk * D, scores.data(), Hq, hk * G + g, std::min<int64_t>(2, G - g), D,
                 pa + (hk * G + g) * D);
}

int64_t decode_attention_splits(int64_t batch, int64_t threads) {
  return batch >= 2 * threads ? 1 : std::min<int64_t>(16, (2 * threads + batch - 1) / batch);
}

// Merge one sequence's chunks (pm/ps [splits][Hq], pa [splits][Hq][D]; empty chunks have ps = 0): rescale every
// chunk to the common max, normalise, write bf16 out [Hq, D].
void decode_attention_merge(const float* pm, const float* ps, const float* pa, int64_t splits, int64_t Hq, int64_t D,
                            at::BFloat16* out) {
  std::vector<float> o(D);
  for (int64_t h = 0; h < Hq; ++h) {
    float mx = -INFINITY;
    for (int64_t c = 0; c < splits; ++c) mx = std::max(mx, pm[c * Hq + h]);
    float sum = 0.f;
    std::fill(o.begin(), o.end(), 0.f);
    for (int64_t c = 0; c < splits; ++c) {
      const int64_t i = c * Hq + h;
      if (ps[i] == 0.f) continue;  // an empty chunk
      const float f = std::exp(pm[i] - mx);
      sum += ps[i] * f;
      for (int64_t d = 0; d < D; ++d) o[d] += pa[i * D + d] * f;
    }
    for (int64_t d = 0; d < D; ++d) out[h * D + d] = at::BFloat16(o[d] / sum);
  }
}

// paged_decode_attention: one query token per sequence attends to its cached K/V, read straight from the
// block pool. Why: the torch route gathers every sequence's blocks into a padded copy before attention,
// which at batch 64 costs more than the attention itself; here each K/V row is read once, where it lies.
//
// A task is one sequence and a run of its tokens, for all heads: a token's K row (all KV heads) is
// contiguous, so pass 1 reads one stream the prefetcher can follow, scoring 16 heads per token at once, and
// prefetches the token's V row; pass 2 then walks V per KV head with the output in registers. Small batches
// split each sequence's tokens into chunks so every core has work (flash-decoding): each chunk keeps its own
// running max, exp-sum and weighted V sum, merged at the end.
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
  auto out = torch::empty_like(q);
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* kp = reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>());
  const auto* vp = reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>());
  const int64_t* tp = block_tables.data_ptr<int64_t>();
  const int64_t* lp = context_lens.data_ptr<int64_t>();
  auto* op = out.data_ptr<at::BFloat16>();
  const float fscale = static_cast<float>(scale);
  const int64_t splits = decode_attention_splits(B, at::get_num_threads());
  // Per (sequence, chunk, query head): running max, exp-sum, and the unnormalised weighted V sum.
  // part_acc is written in full by every non-empty chunk before it is read (empty chunks are skipped by
  // their zero exp-sum), so it is left uninitialised: at batch 64 a zero fill would touch 256 KB per layer.
  std::vector<float> part_m(B * splits * Hq, -INFINITY), part_s(B * splits * Hq, 0.f);
  std::unique_ptr<float[]> part_acc(new float[B * splits * Hq * D]);
  at::parallel_for(0, B * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const uint16_t*> vrow;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / splits, c = task % splits, L = lp[b];
      const int64_t chunk = (L + splits - 1) / splits;
      const int64_t t0 = c * chunk, t1 = std::min(L, t0 + chunk);
      if (t1 <= t0) continue;
      float* pm = part_m.data() + task * Hq;
      float* ps = part_s.data() + task * Hq;
      float* pa = part_acc.get() + task * Hq * D;
      decode_attention_chunk(qp + b * Hq * D, kp, vp, tp + b * maxb, bs, t0, t1, Hq, Hkv, D, fscale, pm, ps, pa,
                             scores, vrow);
      if (splits == 1) {  // the whole sequence in one task: normalise and write out here
        at::BFloat16* ob = op + b * Hq * D;
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t d = 0; d < D; ++d) ob[h * D + d] = at::BFloat16(pa[h * D + d] / ps[h]);
      }
    }
  });
  if (splits == 1) return out;
  for (int64_t b = 0; b < B; ++b)
    decode_attention_merge(part_m.data() + b * splits * Hq, part_s.data() + b * splits * Hq,
                           part_acc.get() + b * splits * Hq * D, splits, Hq, D, op + b * Hq * D);
  return out;
}

namespace {

inline __m512 silu_mul_ps(__m512 g, __m512 u) {
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e)), u);
}

}  // namespace

// One row of silu_mul (below): h = [gate (I) | up (I)] -> out [I].
void silu_mul_row(const uint16_t* g, int64_t I, uint16_t* o) {
  const uint16_t* u = g + I;
  const int64_t i16 = I - I % 16;
  int64_t i = 0;
  for (; i < i16; i += 16) {
    const __m256bh r = _mm512_cvtneps_pbh(silu_mul_ps(load_bf16(g + i), load_bf16(u + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), (__m256i)r);
  }
  if (i < I) {
    const __mmask16 mk = static_cast<__mmask16>((1u << (I - i)) - 1);
    const __m256bh r = _mm512_cvtneps_pbh(silu_mul_ps(load_bf16_masked(g + i, mk), load_bf16_masked(u + i, mk)));
    _mm256_mask_storeu_epi16(o + i, mk, (__m256i)r);
  }
}

// silu_mul: SwiGLU's silu(gate) * up on the fused gate|up projection [M, 2I] -> [M, I], in one pass with
// fp32 math. Why: torch runs it as two bf16 ops with a [M, I] temporary in between, ~1.4 ms per layer for a
// 1024-token prefill chunk at I = 3072 on 2 cores; one pass reads each input once and writes once.
torch::Tensor silu_mul(torch::Tensor h) {
  TORCH_CHECK(h.scalar_type() == at::kBFloat16 && h.dim() == 2 && h.size(1) % 2 == 0, "bf16 [M, 2I] expected");
  h = h.contiguous();
  const int64_t M = h.size(0), I = h.size(1) / 2;
  auto out = torch::empty({M, I}, h.options());
  const auto* hp = reinterpret_cast<const uint16_t*>(h.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(I, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) silu_mul_row(hp + m * 2 * I, I, op + m * I);
  });
  return out;
}

namespace {

inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }  // round to nearest even
inline __m512 round_bf16(__m512 v) { return load_bf16_from(to_bf16(v)); }

}  // namespace

// One row of rms_norm (below): out = weight * bf16(x * rsqrt(mean(x^2) + eps)); with a residual, x is first
// replaced by bf16(x + residual), written to `sum`.
void rms_norm_row(const uint16_t* xr, const uint16_t* rr, const uint16_t* wp, int64_t H, float feps, uint16_t* orow,
                  uint16_t* srow) {
  if (rr) {  // x := bf16(x + residual), the new residual stream; normalise that
    for (int64_t i = 0; i < H; i += 16) {
      const __mmask16 mk = H - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (H - i)) - 1);
      const __m512 v = _mm512_add_ps(load_bf16_masked(xr + i, mk), load_bf16_masked(rr + i, mk));
      _mm256_mask_storeu_epi16(srow + i, mk, to_bf16(v));
    }
    xr = srow;
  }
  __m512 ss = _mm512_setzero_ps();
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 mk = H - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (H - i)) - 1);
    const __m512 v = load_bf16_masked(xr + i, mk);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const __m512 r = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(H) + feps));
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 mk = H - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (H - i)) - 1);
    const __m512 n = round_bf16(_mm512_mul_ps(load_bf16_masked(xr + i, mk), r));
    _mm256_mask_storeu_epi16(orow + i, mk, to_bf16(_mm512_mul_ps(load_bf16_masked(wp + i, mk), n)));
  }
}

// rms_norm: weight * bf16(x * rsqrt(mean(x^2) + eps)) per row, with the reference implementations' two
// roundings (normalised value to bf16, then the product with the bf16 weight). With `residual`, x is first
// replaced by bf16(x + residual) and that sum is returned too (the pre-norm residual stream).
// Why: torch runs an RMSNorm as ~8 small ops, ~27 us each at batch 1; a decode step has 2 per layer.
std::vector<torch::Tensor> rms_norm(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor weight,
                                    double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16, "bf16 expected");
  const int64_t H = x.size(-1);
  TORCH_CHECK(weight.numel() == H, "weight size mismatch");
  x = x.contiguous();
  weight = weight.contiguous();
  const int64_t M = x.numel() / std::max<int64_t>(H, 1);
  auto out = torch::empty_like(x);
  torch::Tensor sum;
  const uint16_t* rp = nullptr;
  uint16_t* sp = nullptr;
  if (residual.has_value()) {
    TORCH_CHECK(residual->scalar_type() == at::kBFloat16 && residual->numel() == x.numel(), "residual mismatch");
    auto r = residual->contiguous();
    sum = torch::empty_like(x);
    rp = reinterpret_cast<const uint16_t*>(r.data_ptr<at::BFloat16>());
    sp = reinterpret_cast<uint16_t*>(sum.data_ptr<at::BFloat16>());
    residual = r;  // keep the contiguous copy alive
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const float feps = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      rms_norm_row(xp + m * H, rp ? rp + m * H : nullptr, wp, H, feps, op + m * H, rp ? sp + m * H : nullptr);
  });
  if (rp) return {out, sum};
  return {out};
}

// One token of rope (below): NH heads of D values starting at x (heads contiguous), cos/sin [D], out [NH, D].
void rope_row(const uint16_t* x, int64_t NH, int64_t D, const uint16_t* c, const uint16_t* sn, uint16_t* out) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < NH; ++h) {
    const uint16_t* xr = x + h * D;
    uint16_t* orow = out + h * D;
    for (int64_t i = 0; i < half; i += 16) {
      const __m512 x1 = load_bf16(xr + i), x2 = load_bf16(xr + half + i);
      const __m512 lo = _mm512_add_ps(round_bf16(_mm512_mul_ps(x1, load_bf16(c + i))),
                                      round_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), x2), load_bf16(sn + i))));
      const __m512 hi = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, load_bf16(c + half + i))),
                                      round_bf16(_mm512_mul_ps(x1, load_bf16(sn + half + i))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + i), to_bf16(lo));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + half + i), to_bf16(hi));
    }
  }
}

// rope: rotary embedding of x [T, heads, D] (rows may be strided, e.g. q and k inside the fused qkv output)
// with per-token cos/sin [T, D] (bf16, half-split layout), rounding like the reference bf16 code:
// bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)). Why: that is 6 torch ops per layer otherwise.
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && cos.scalar_type() == at::kBFloat16, "bf16 expected");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2), "x [T, heads, D], rows may be strided");
  const int64_t T = x.size(0), NH = x.size(1), D = x.size(2);
  TORCH_CHECK(D % 32 == 0, "head_dim must be a multiple of 32");
  cos = cos.reshape({T, D}).contiguous();
  sin = sin.reshape({T, D}).contiguous();
  auto out = torch::empty({T, NH, D}, x.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* cp = reinterpret_cast<const uint16_t*>(cos.data_ptr<at::BFloat16>());
  const auto* snp = reinterpret_cast<const uint16_t*>(sin.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t xs = x.stride(0);
  at::parallel_for(0, T, std::max<int64_t>(1, 256 / std::max<int64_t>(NH, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) rope_row(xp + t * xs, NH, D, cp + t * D, snp + t * D, op + t * NH * D);
  });
  return out;
}

// write_kv: k/v [T, Hkv, D] (rows may be strided, e.g. inside the fused qkv output) into their cache slots,
// the caches [blocks, block_size, Hkv, D]. Why: index_copy_ runs on one thread with per-element indexing, ~45 us
// per layer at batch 64 while the other thread waits; here each slot is one contiguous copy, rows split across
// the threads.
void write_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor k, torch::Tensor v, torch::Tensor slots) {
  TORCH_CHECK(k_cache.scalar_type() == at::kBFloat16 && v_cache.scalar_type() == at::kBFloat16 &&
                  k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16, "write_kv: bf16 expected");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "write_kv: caches must be contiguous");
  const int64_t Hkv = k_cache.size(-2), D = k_cache.size(-1), row = Hkv * D, T = k.size(0);
  const int64_t n_slots = k_cache.numel() / row;
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.size(1) == Hkv && k.size(2) == D && v.sizes() == k.sizes(),
              "write_kv: k and v must be [T, kv_heads, head_dim] like the cache");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == D && v.stride(2) == 1 && v.stride(1) == D,
              "write_kv: each k/v row must be contiguous");
  slots = slots.to(at::kLong).contiguous();
  TORCH_CHECK(slots.numel() == T, "write_kv: one slot per row");
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sp[t] >= 0 && sp[t] < n_slots, "write_kv: slot out of range");
  auto* kc = k_cache.data_ptr<at::BFloat16>();
  auto* vc = v_cache.data_ptr<at::BFloat16>();
  const auto* kp = k.data_ptr<at::BFloat16>();
  const auto* vp = v.data_ptr<at::BFloat16>();
  const int64_t ks = k.stride(0), vs = v.stride(0);
  at::parallel_for(0, T, std::max<int64_t>(1, 16384 / row), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(kc + sp[t] * row, kp + t * ks, row * sizeof(at::BFloat16));
      std::memcpy(vc + sp[t] * row, vp + t * vs, row * sizeof(at::BFloat16));
    }
  });
}

namespace {

// Scores of up to 4 query rows against 16 keys: K is packed [D/2][keys][2] so one 512-bit load holds one
// d-pair of 16 keys, and dpbf16 with a broadcast query d-pair adds that pair's products for all 16 at once.
template <int R>
inline void score_block(const uint32_t* const* qrows, const uint32_t* kp, int64_t stride, int64_t pairs, float scale,
                        float* const* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh kv = (__m512bh)_mm512_loadu_si512(kp + p * stride);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(qrows[r][p]), kv);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out[r], _mm512_mul_ps(acc[r], _mm512_set1_ps(scale)));
}

// Up to 4 rows of P (bf16, key pairs as uint32) times V packed [key pairs][D][2], for DC*16 output columns,
// added to the fp32 output rows after scaling them by alpha (flash attention's rescale for a new running max).
template <int R, int DC>
inline void pv_acc_block(const uint32_t* const* prow, const uint16_t* vp, int64_t D, int64_t npairs, const float* alpha,
                         float* const* out) {
  __m512 acc[R][DC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < DC; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(out[r] + c * 16), _mm512_set1_ps(alpha[r]));
  for (int64_t jp = 0; jp < npairs; ++jp) {
    __m512bh vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = (__m512bh)_mm512_loadu_si512(vp + (jp * D + c * 16) * 2);
    for (int r = 0; r < R; ++r) {
      const __m512bh pv = (__m512bh)_mm512_set1_epi32(prow[r][jp]);
      for (int c = 0; c < DC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pv, vv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < DC; ++c) _mm512_storeu_ps(out[r] + c * 16, acc[r][c]);
}

}  // namespace

// prefill_attention: causal attention of a prompt chunk's queries q [n, Hq, D] over its sequence's keys and
// values k, v [L, Hkv, D] (the chunk's own, or cached context followed by the chunk: query i sits at position
// L - n + i). Why: torch's fused CPU attention runs at 50-130 GFLOP/s here (fp32 inside); this one keeps
// both matmuls on the bf16 dot-product instruction: scores against K packed [D/2][L][2], probabilities
// rounded to bf16 (as flash attention does) times V packed [L/2][D][2].
//
// Flash-style tiling: a task is one KV head and a block of query positions (all their query heads as rows);
// it walks the keys in blocks of kKeyBlock, keeping per row a running max, exp-sum and fp32 output, so the
// working set (one key block of K and V, the block's scores) stays in L2 whatever the context length. The
// untiled version scored every key of the context at once: past ~1k tokens its score rows and K/V left L2
// and the gain over torch fell from 3.2x to 1.2x.
torch::Tensor prefill_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16,
              "bf16 expected");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(), "q [n, Hq, D], k and v [L, Hkv, D]");
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  const int64_t n = q.size(0), Hq = q.size(1), D = q.size(2), L = k.size(0), Hkv = k.size(1);
  TORCH_CHECK(k.size(2) == D && D % 32 == 0 && Hq % Hkv == 0 && L >= n, "unsupported shapes");
  const int64_t G = Hq / Hkv, offset = L - n, P2 = D / 2;
  const int64_t Lk = (L + 15) / 16 * 16;  // keys padded to whole 16-key blocks
  constexpr int64_t kKeyBlock = 256;      // keys per tile: K and V tiles of 32 KB each at D = 64
  auto out = torch::empty_like(q);
  const auto* q32 = reinterpret_cast<const uint32_t*>(q.data_ptr<at::BFloat16>());
  const auto* k32 = reinterpret_cast<const uint32_t*>(k.data_ptr<at::BFloat16>());
  const auto* vsrc = reinterpret_cast<const uint16_t*>(v.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  std::vector<uint32_t> kp(Hkv * P2 * Lk, 0);         // [hk][d pair][key]
  std::vector<uint16_t> vp(Hkv * (Lk / 2) * D * 2, 0);  // [hk][key pair][d][2]
  at::parallel_for(0, Hkv, 1, [&](int64_t b, int64_t e) {
    for (int64_t hk = b; hk < e; ++hk) {
      for (int64_t j = 0; j < L; ++j) {
        const uint32_t* kr = k32 + (j * Hkv + hk) * P2;
        for (int64_t p = 0; p < P2; ++p) kp[(hk * P2 + p) * Lk + j] = kr[p];
        const uint16_t* vr = vsrc + (j * Hkv + hk) * D;
        uint16_t* dst = vp.data() + (hk * (Lk / 2) + j / 2) * D * 2 + (j & 1);
        for (int64_t d = 0; d < D; ++d) dst[d * 2] = vr[d];
      }
    }
  });
  // Query positions per task: ~32 rows (positions x G heads) share each K/V tile; at least 4 positions.
  const int64_t kPos = std::max<int64_t>(4, 32 / G);
  const int64_t blocks = (n + kPos - 1) / kPos;
  // Causal tasks differ in cost (a later query block sees more keys): hand them out dynamically, the
  // costliest first, so the threads finish together (a static split left one thread ~15% behind).
  const int64_t ntasks = Hkv * blocks;
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks)))
  {
    const int64_t rows_max = kPos * G;
    std::vector<float> S(rows_max * kKeyBlock), O(rows_max * D), m(rows_max), l(rows_max), alpha(rows_max);
    std::vector<uint16_t> P(rows_max * kKeyBlock);
    std::vector<int64_t> visible(rows_max);
    std::vector<const uint32_t*> qr(rows_max);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t hk = task % Hkv, i0 = (blocks - 1 - task / Hkv) * kPos, i1 = std::min(n, i0 + kPos);
      const int64_t rows = (i1 - i0) * G;
      for (int64_t r = 0; r < rows; ++r) {  // row r: position i0 + r / G, query head hk * G + r % G
        const int64_t i = i0 + r / G, h = hk * G + r % G;
        qr[r] = q32 + (i * Hq + h) * P2;
        visible[r] = offset + i + 1;
        m[r] = -INFINITY;
        l[r] = 0.f;
      }
      std::fill(O.begin(), O.begin() + rows * D, 0.f);
      const int64_t kend = visible[rows - 1];  // the last row sees the most keys
      for (int64_t j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const int64_t j1 = std::min(kend, j0 + kKeyBlock);
        // Scores, 4 rows x 16 keys at a time, up to the last key any of the 4 rows may see.
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
          const int64_t rc = std::min<int64_t>(4, rows - r0);
          const int64_t rend = std::min(j1, visible[r0 + rc - 1]);
          for (int64_t jb = j0; jb < rend; jb += 16) {
            float* so[4];
            for (int64_t r = 0; r < rc; ++r) so[r] = S.data() + (r0 + r) * kKeyBlock + (jb - j0);
            const uint32_t* kb = kp.data() + hk * P2 * Lk + jb;
            switch (rc) {
              case 1: score_block<1>(qr.data() + r0, kb, Lk, P2, scale, so); break;
              case 2: score_block<2>(qr.data() + r0, kb, Lk, P2, scale, so); break;
              case 3: score_block<3>(qr.data() + r0, kb, Lk, P2, scale, so); break;
              default: score_block<4>(qr.data() + r0, kb, Lk, P2, scale, so); break;
            }
          }
        }
        // Online softmax: new running max per row, rescale factor for what was summed so far, probabilities
        // (bf16) for this tile, zero past the row's last visible key up to its 4-row group's score width.
        for (int64_t r = 0; r < rows; ++r) {
          const float* sr = S.data() + r * kKeyBlock;
          uint16_t* pr = P.data() + r * kKeyBlock;
          const int64_t cnt = std::max<int64_t>(0, std::min(j1, visible[r]) - j0);  // visible keys in the tile
          const int64_t group_end = std::min(j1, visible[std::min(rows, (r / 4 + 1) * 4) - 1]);
          const int64_t width = (group_end - j0 + 1) / 2 * 2;  // even: P is read in key pairs
          if (cnt == 0) {
            alpha[r] = 1.f;
            for (int64_t j = 0; j < width; ++j) pr[j] = 0;
            continue;
          }
          __m512 mx = _mm512_set1_ps(-INFINITY);
          int64_t j = 0;
          for (; j + 16 <= cnt; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sr + j));
          if (j < cnt) mx = _mm512_mask_max_ps(mx, lanes16(cnt - j), mx, _mm512_maskz_loadu_ps(lanes16(cnt - j), sr + j));
          const float m_new = std::max(m[r], _mm512_reduce_max_ps(mx));
          alpha[r] = std::exp(m[r] - m_new);  // exp(-inf) = 0 for the first tile
          m[r] = m_new;
          __m512 sum = _mm512_setzero_ps();
          for (j = 0; j < cnt; j += 16) {
            const __mmask16 mk = lanes16(cnt - j);
            const __m512 e = _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sr + j), _mm512_set1_ps(m_new))));
            sum = _mm512_add_ps(sum, e);
            _mm256_mask_storeu_epi16(pr + j, mk, to_bf16(e));
          }
          l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
          for (j = cnt; j < width; ++j) pr[j] = 0;
        }
        // O = O * alpha + P V over this tile, 4 rows at a time, in 64- (or 32-) column passes.
        const uint16_t* vb = vp.data() + (hk * (Lk / 2) + j0 / 2) * D * 2;
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
          const int64_t rc = std::min<int64_t>(4, rows - r0);
          const int64_t group_end = std::min(j1, visible[r0 + rc - 1]);
          const int64_t npairs = (group_end - j0 + 1) / 2;
          if (npairs <= 0) continue;
          const uint32_t* pr[4];
          for (int64_t r = 0; r < rc; ++r) pr[r] = reinterpret_cast<const uint32_t*>(P.data() + (r0 + r) * kKeyBlock);
          const float* al = alpha.data() + r0;
          for (int64_t d0 = 0; d0 < D; d0 += (D - d0 >= 64 ? 64 : 32)) {
            float* o[4];
            for (int64_t r = 0; r < rc; ++r) o[r] = O.data() + (r0 + r) * D + d0;
            const bool wide = D - d0 >= 64;
            switch (rc * 2 + wide) {
              case 2: pv_acc_block<1, 2>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 3: pv_acc_block<1, 4>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 4: pv_acc_block<2, 2>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 5: pv_acc_block<2, 4>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 6: pv_acc_block<3, 2>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 7: pv_acc_block<3, 4>(pr, vb + d0 * 2, D, npairs, al, o); break;
              case 8: pv_acc_block<4, 2>(pr, vb + d0 * 2, D, npairs, al, o); break;
              default: pv_acc_block<4, 4>(pr, vb + d0 * 2, D, npairs, al, o); break;
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {  // normalise and write out
        const int64_t i = i0 + r / G, h = hk * G + r % G;
        uint16_t* orow = op + (i * Hq + h) * D;
        const __m512 inv = _mm512_set1_ps(1.f / l[r]);
        for (int64_t d = 0; d < D; d += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + d), to_bf16(_mm512_mul_ps(_mm512_loadu_ps(O.data() + r * D + d), inv)));
      }
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("prefill_attention", &prefill_attention, "causal attention of a prompt chunk over its context (bf16)");
  m.def("decode_layers", &decode_layers, "a decode step through Llama-family layers (bf16, int8, int4; CPU)");
  m.def("rms_norm", &rms_norm, "bf16 RMSNorm, optionally after a residual add (returns [out] or [out, sum])",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"));
  m.def("rope", &rope, "rotary embedding, bf16, half-split layout");
  m.def("write_kv", &write_kv, "k/v rows [T, kv_heads, D] into their paged cache slots (bf16)");
  m.def("silu_mul", &silu_mul, "silu(h[:, :I]) * h[:, I:] for bf16 [M, 2I]");
  m.def("bf16_linear", &bf16_linear, "y = x @ w.T + bias for bf16 (AVX512-BF16)", py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none());
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention over the paged KV cache (bf16)");
  m.def("int8_linear", &int8_linear, "y = x @ (q * scale).T + bias (bf16 x, int8 weight, per-row or group scales)",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("bias") = py::none(), py::arg("interleaved") = py::none());
  m.def("int4_linear", &int4_linear, "y = x @ (q * scale + min).T + bias (bf16 x, int4 group-wise weight)",
        py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("mins"), py::arg("group_size"),
        py::arg("bias") = py::none(), py::arg("sym8") = false, py::arg("interleaved") = py::none());
  m.def("int8_linear_q8a", &int8_linear_q8a, "int8_linear with x quantized to int8 per 32 inputs (VNNI)",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("bias") = py::none(), py::arg("interleaved") = py::none());
  m.def("int4_linear_q8a", &int4_linear_q8a, "int4_linear with x quantized to int8 per 32 inputs (VNNI)",
        py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("mins"), py::arg("group_size"),
        py::arg("bias") = py::none(), py::arg("sym8") = false, py::arg("interleaved") = py::none());
  m.def("int8_dequantize", &int8_dequantize, "int8 weight -> bf16");
  m.def("set_int8_activations", &set_int8_activations, "int8/int4 layers: quantize inputs to int8 (VNNI) or not");
  m.def("int8_activations", &int8_activations, "whether int8/int4 layers quantize their inputs to int8");
  m.def("int4_dequantize", &int4_dequantize, "int4 group-wise weight -> bf16");
}

// Weight-only quantized linear layers for CPUs with AVX512-BF16: y = x @ dequant(W).T (+ bias), bf16 x and y,
// fp32 accumulation, the weight never expanded in memory.
//
// Why our own kernels: at batch 1 a decode step is bound by how fast the weights stream from memory, so a
// weight stored in 8 or 4 bits should run 2x or ~3.5x faster than bf16. torch's CPU ops for this
// (_weight_int8pack_mm, _weight_int4pack_mm_for_cpu) run at about bf16 speed at 1 row and slower at 4.
//
// The trick for both: int8 and int4 values are exact in bf16, so each weight chunk becomes a bf16 vector in
// registers and the AVX512-BF16 dot product (32 multiply-adds per instruction) does the rest.
//
// Formats (shared with the torch fallback in quant_linear.py):
//   int8: q int8 [N, K], symmetric: w = q * scale[n] per output row (scale fp32 [N]), or w = q * scale[n, g]
//         per group of G inputs (scale [N, K/G]; GGUF's Q8_0 is G = 32 with fp16 scales).
//   int4: q uint8 [N, K/2], asymmetric per group of G inputs: w = q * scale[n, g] + min[n, g] ([N, K/G]),
//         q in 0..15.
//   Scales and minimums may be fp32, bf16 or fp16 (GGUF stores fp16, and its K-quants' products need fp32
//   to stay exact): they are read one per group, so their type costs nothing in the inner loop. Packed in blocks of 64 inputs: byte t of the 32-byte block at input k holds input k+t in
//         its low nibble and input k+32+t in its high nibble, so one widening load plus a mask (low) or a
//         shift and mask (high) gives 32 consecutive inputs.
#include "kernels.h"
#include "simd.h"
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

using namespace llmasos_simd;

constexpr int64_t kRowsM = 4;   // input rows sharing one pass over a weight row
constexpr int64_t kTileN = 32;  // weight rows per parallel task
constexpr int kTernAndOr = 0xEA;   // _mm512_ternarylogic: (a & b) | c
constexpr int kTernAndXor = 0x6A;  // _mm512_ternarylogic: (a & b) ^ c

inline void store_row(at::BFloat16* y, float v) { *y = at::BFloat16(v); }  // round to nearest even

// sum over groups g of (a[n, g] + b_scale * b[n, g]) * xsum[g]: the per-group offset terms of one output, in
// vectors of 16 groups once at the end instead of a scalar update at every group boundary. `b` may be empty.
inline float group_dot(Scales a, Scales b, float b_scale, int64_t row, int64_t ng, const float* xsum) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < ng; g0 += 16) {
    const __mmask16 m = lanes16(ng - g0);
    __m512 off = a.load16(row * ng + g0, m);
    if (b.p) off = _mm512_fmadd_ps(b.load16(row * ng + g0, m), _mm512_set1_ps(b_scale), off);
    acc = _mm512_fmadd_ps(off, _mm512_maskz_loadu_ps(m, xsum + g0), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

Scales scales_of(const torch::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "scales must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              "scales must be float32, bfloat16 or float16");
  return Scales{t.data_ptr(), t.scalar_type()};
}

// ---------------------------------------------------------------------------------------------------- int8
// Converting 32 int8 to bf16 through fp32 costs five vector ops; splitting each byte into nibbles costs three
// cheap integer ops, as in the int4 kernel. With q = 16 h + l (h = q >> 4 in -8..7, l = q & 15):
//   (l | 0x4300) is the bf16 of 128 + l, and ((q >> 4) & 15) ^ 0x4308 is the bf16 of 136 + h, so
//   dot(x, q) = dot(16 x, 136 + h) + dot(x, 128 + l) - 2304 sum(x)   (16 x is exact in bf16).
// Per group g of G inputs: y += scale_g * (dot_g - 2304 sum_g(x)); a per-row scale is the case G = K.
template <int MC, int NC, bool kTwoChains = false>
inline void micro_i8(const uint16_t* x, const uint16_t* x16, const float* xsum, const int8_t* q, Scales scale,
                     const float* bias, at::BFloat16* y, int64_t K, int64_t N, int64_t G, int64_t m0, int64_t n,
                     int64_t prefetch_row) {
  const int64_t ng = K / G;
  const __m512i mask = _mm512_set1_epi16(0x000F), magic_lo = _mm512_set1_epi16(0x4300),
                magic_hi = _mm512_set1_epi16(0x4308);
  // kTwoChains: the low-nibble products get their own accumulator, for one weight row at a time (otherwise a
  // single dependency chain would bound the loop); with several weight rows the chains are already there.
  __m512 acc[MC][NC], part[MC][NC], part_lo[kTwoChains ? MC : 1][kTwoChains ? NC : 1];
  for (int i = 0; i < MC; ++i)
    for (int j = 0; j < NC; ++j) acc[i][j] = part[i][j] = _mm512_setzero_ps();
  if constexpr (kTwoChains)
    for (int i = 0; i < MC; ++i)
      for (int j = 0; j < NC; ++j) part_lo[i][j] = _mm512_setzero_ps();
  int64_t in_group = 0;
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh lo[NC], hi[NC];
    for (int j = 0; j < NC; ++j) {
      const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + (n + j) * K + k)));
      lo[j] = (__m512bh)_mm512_ternarylogic_epi32(v, mask, magic_lo, kTernAndOr);
      hi[j] = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), mask, magic_hi, kTernAndXor);
    }
    // With few input rows the loop waits on memory: start fetching the next row group now.
    if (prefetch_row >= 0 && k % 64 == 0)
      for (int j = 0; j < NC; ++j) _mm_prefetch(reinterpret_cast<const char*>(q + (prefetch_row + j) * K + k), _MM_HINT_T0);
    for (int i = 0; i < MC; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + i) * K + k);
      const __m512bh xv16 = (__m512bh)_mm512_loadu_si512(x16 + (m0 + i) * K + k);
      for (int j = 0; j < NC; ++j) {
        part[i][j] = _mm512_dpbf16_ps(part[i][j], xv16, hi[j]);
        if constexpr (kTwoChains) part_lo[i][j] = _mm512_dpbf16_ps(part_lo[i][j], xv, lo[j]);
        else part[i][j] = _mm512_dpbf16_ps(part[i][j], xv, lo[j]);
      }
    }
    in_group += 32;
    if (in_group == G) {  // end of group g: apply its scale
      in_group = 0;
      const int64_t g = k / G;
      for (int j = 0; j < NC; ++j) {
        const __m512 sv = _mm512_set1_ps(scale[(n + j) * ng + g]);
        for (int i = 0; i < MC; ++i) {
          __m512 p = part[i][j];
          if constexpr (kTwoChains) {
            p = _mm512_add_ps(p, part_lo[i][j]);
            part_lo[i][j] = _mm512_setzero_ps();
          }
          acc[i][j] = _mm512_fmadd_ps(p, sv, acc[i][j]);
          part[i][j] = _mm512_setzero_ps();
        }
      }
    }
  }
  for (int i = 0; i < MC; ++i)
    for (int j = 0; j < NC; ++j) {
      const float corr = group_dot(scale, Scales{}, 0.f, n + j, ng, xsum + (m0 + i) * ng);
      store_row(y + (m0 + i) * N + n + j,
                _mm512_reduce_add_ps(acc[i][j]) - 2304.f * corr + (bias ? bias[n + j] : 0.f));
    }
}

// ---------------------------------------------------------------------------------------------------- int4
// A nibble OR 0x4300 is the bf16 bit pattern of 128 + q, exactly; so dot(x, 128 + q) comes out of one
// dpbf16 per 32 inputs and y = sum_g scale_g * dot_g + sum_g (min_g - 128 scale_g) * sum_g(x), the second
// sum in vectors at the end (group_dot).
template <int MC, int NC>
inline void micro_i4(const uint16_t* x, const uint8_t* q, Scales scales, Scales mins,
                     const float* xsum, const float* bias, at::BFloat16* y, int64_t K, int64_t N, int64_t G,
                     int64_t m0, int64_t n, int64_t prefetch_row) {
  const int64_t ng = K / G, kb = K / 2;
  const __m512i mask = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
  __m512 acc[MC][NC], part[MC][NC];
  for (int i = 0; i < MC; ++i)
    for (int j = 0; j < NC; ++j) acc[i][j] = part[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 64) {
    __m512bh wv[2][NC];
    for (int j = 0; j < NC; ++j) {
      const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + (n + j) * kb + k / 2)));
      wv[0][j] = (__m512bh)_mm512_ternarylogic_epi32(v, mask, magic, kTernAndOr);
      wv[1][j] = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), mask, magic, kTernAndOr);
    }
    if (prefetch_row >= 0)
      for (int j = 0; j < NC; ++j) _mm_prefetch(reinterpret_cast<const char*>(q + (prefetch_row + j) * kb + k / 2), _MM_HINT_T0);
    for (int h = 0; h < 2; ++h) {
      const int64_t kk = k + 32 * h;
      for (int i = 0; i < MC; ++i) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + i) * K + kk);
        for (int j = 0; j < NC; ++j) part[i][j] = _mm512_dpbf16_ps(part[i][j], xv, wv[h][j]);
      }
      if (((kk + 32) & (G - 1)) == 0) {  // end of group g: apply its scale and offset
        const int64_t g = kk / G;
        for (int j = 0; j < NC; ++j) {
          const __m512 sv = _mm512_set1_ps(scales[(n + j) * ng + g]);
          for (int i = 0; i < MC; ++i) {
            acc[i][j] = _mm512_fmadd_ps(part[i][j], sv, acc[i][j]);
            part[i][j] = _mm512_setzero_ps();
          }
        }
      }
    }
  }
  for (int i = 0; i < MC; ++i)
    for (int j = 0; j < NC; ++j) {
      const float corr = group_dot(mins, scales, -128.f, n + j, ng, xsum + (m0 + i) * ng);  // min - 128 scale
      store_row(y + (m0 + i) * N + n + j, _mm512_reduce_add_ps(acc[i][j]) + corr + (bias ? bias[n + j] : 0.f));
    }
}

// Walk one tile of weight rows [n0, n1): input rows in groups of kRowsM, weight rows NC at a time.
// `call(mc, n, nc_is_full, prefetch)` runs the micro-kernel; NC is fixed per kernel by the caller.
template <int NC, typename Micro, typename Micro1>
inline void walk_tile(int64_t M, int64_t N, int64_t n0, int64_t n1, Micro micro, Micro1 micro1) {
  for (int64_t m0 = 0; m0 < M; m0 += kRowsM) {
    const int64_t mc = std::min(kRowsM, M - m0);
    int64_t n = n0;
    for (; n + NC <= n1; n += NC) {
      const int64_t next = (m0 == 0 && n + 2 * NC <= N) ? n + NC : -1;
      micro(mc, m0, n, next);
    }
    for (; n < n1; ++n) micro1(mc, m0, n);
  }
}

torch::Tensor optional_bias(const c10::optional<torch::Tensor>& bias, int64_t N) {
  if (!bias.has_value() || !bias->defined()) return torch::Tensor();
  TORCH_CHECK(bias->numel() == N, "bias size mismatch");
  return bias->scalar_type() == at::kFloat && bias->is_contiguous() ? *bias : bias->to(at::kFloat).contiguous();
}

}  // namespace

// The group size of an int8 scale table: [N] is one scale per row (G = K), [N, K/G] one per group.
static int64_t int8_group(const torch::Tensor& scale, int64_t N, int64_t K) {
  if (scale.dim() == 1) {
    TORCH_CHECK(scale.size(0) == N, "int8: scale [N] expected");
    return K;
  }
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == N && scale.size(1) > 0 && K % scale.size(1) == 0,
              "int8: scale [N] or [N, K/G] expected");
  const int64_t G = K / scale.size(1);
  TORCH_CHECK(G % 32 == 0, "int8: the group size must be a multiple of 32");
  return G;
}

static bool g_int8_activations = true;
// Up to this many rows the VNNI kernels win (one weight row at a time, 64 multiply-adds per instruction);
// past it the bf16 kernels, which share each unpacked weight vector across 4 weight rows, are faster.
constexpr int64_t kVnniRows = 2;
// With the 16-row-interleaved copy (no horizontal sums, 4 input rows per pass over the weights) the VNNI kernel
// beats the bf16 kernels at every row count and oneDNN's bf16 matmul up to 32 rows (QuantLinear.native_rows).
constexpr int64_t kVnniRowsInterleaved = 32;
static bool use_vnni(int64_t rows, const c10::optional<torch::Tensor>& interleaved) {
  return g_int8_activations &&
         (rows <= kVnniRows || (rows <= kVnniRowsInterleaved && interleaved.has_value() && interleaved->defined()));
}
bool int8_activations() { return g_int8_activations; }
void set_int8_activations(bool on) { g_int8_activations = on; }

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                          c10::optional<torch::Tensor> interleaved) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && q.scalar_type() == at::kChar, "bf16 x and int8 weight expected");
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1) && q.size(1) % 32 == 0, "shape mismatch");
  if (use_vnni(x.size(0), interleaved)) return int8_linear_q8a(x, q, scale, bias, interleaved);
  x = x.contiguous();
  q = q.contiguous();
  scale = scale.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0), G = int8_group(scale, N, K), ng = K / G;
  const Scales sp = scales_of(scale);
  auto bc = optional_bias(bias, N);
  auto y = torch::empty({M, N}, x.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  // 16 x (an exponent bump, exact unless it overflows) and the group sums of x, for the nibble split.
  std::vector<uint16_t> x16(M * K);
  std::vector<float> xsum(M * ng, 0.f);
  for (int64_t i = 0; i < M * K; ++i) {
    const float v = bf16_to_float(xp[i]);
    xsum[(i / K) * ng + (i % K) / G] += v;
    x16[i] = at::BFloat16(16.f * v).x;
  }
  const uint16_t* x16p = x16.data();
  const float* xs = xsum.data();
  const auto* qp = q.data_ptr<int8_t>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  auto* yp = y.data_ptr<at::BFloat16>();
  constexpr int NC = 4;
  auto micro = [&](int64_t mc, int64_t m0, int64_t n, int64_t next) {
    switch (mc) {
      case 1: micro_i8<1, NC>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, m0, n, next); break;
      case 2: micro_i8<2, NC>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, m0, n, next); break;
      case 3: micro_i8<3, NC>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, m0, n, next); break;
      default: micro_i8<4, NC>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, m0, n, next); break;
    }
  };
  auto micro1 = [&](int64_t mc, int64_t m0, int64_t n) {
    for (int64_t i = 0; i < mc; ++i) micro_i8<1, 1>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, m0 + i, n, -1);
  };
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kTileN, n1 = std::min(N, (t + 1) * kTileN);
      // One input row: one weight row at a time, so each thread reads its rows as one sequential stream the
      // hardware prefetcher follows (1.5x the bandwidth of 4 interleaved rows on Zen 4). More input rows are
      // compute-bound and share each unpacked weight vector across 4 weight rows instead.
      if (M == 1) {
        for (int64_t n = n0; n < n1; ++n) micro_i8<1, 1, true>(xp, x16p, xs, qp, sp, bp, yp, K, N, G, 0, n, -1);
      } else {
        walk_tile<NC>(M, N, n0, n1, micro, micro1);
      }
    }
  });
  return y;
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                          int64_t group_size, c10::optional<torch::Tensor> bias, bool sym8,
                          c10::optional<torch::Tensor> interleaved) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && q.scalar_type() == at::kByte, "bf16 x and uint8 packed weight expected");
  TORCH_CHECK(scales.scalar_type() == mins.scalar_type(), "int4: scales and mins must have one dtype");
  const int64_t G = group_size;
  TORCH_CHECK(G >= 32 && (G & (G - 1)) == 0, "group size must be a power of two >= 32");
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == 2 * q.size(1), "shape mismatch");
  if (use_vnni(x.size(0), interleaved)) return int4_linear_q8a(x, q, scales, mins, group_size, bias, sym8, interleaved);
  x = x.contiguous();
  q = q.contiguous();
  scales = scales.contiguous();
  mins = mins.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0), ng = K / G;
  TORCH_CHECK(K % 64 == 0 && K % G == 0 && scales.size(0) == N && scales.size(1) == ng, "shape mismatch");
  // Group sums of x, for the min/offset term (a plain loop: a torch reduction costs more to call than to run).
  std::vector<float> xsum(M * ng, 0.f);
  {
    const auto* xr = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    for (int64_t i = 0; i < M * K; ++i) xsum[i / G] += bf16_to_float(xr[i]);
  }
  auto bc = optional_bias(bias, N);
  auto y = torch::empty({M, N}, x.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* qp = q.data_ptr<uint8_t>();
  const Scales sp = scales_of(scales), mp = scales_of(mins);
  const float* xs = xsum.data();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  auto* yp = y.data_ptr<at::BFloat16>();
  // Two accumulators per (row, column) pair: 4 weight rows at once for 1-2 input rows, 2 for 3-4 (registers).
  auto micro1 = [&](int64_t mc, int64_t m0, int64_t n) {
    for (int64_t i = 0; i < mc; ++i) micro_i4<1, 1>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0 + i, n, -1);
  };
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  if (M <= 2) {
    auto micro = [&](int64_t mc, int64_t m0, int64_t n, int64_t next) {
      if (mc == 1) micro_i4<1, 4>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next);
      else micro_i4<2, 4>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next);
    };
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) walk_tile<4>(M, N, t * kTileN, std::min(N, (t + 1) * kTileN), micro, micro1);
    });
  } else {
    auto micro = [&](int64_t mc, int64_t m0, int64_t n, int64_t next) {
      switch (mc) {
        case 1: micro_i4<1, 2>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next); break;
        case 2: micro_i4<2, 2>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next); break;
        case 3: micro_i4<3, 2>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next); break;
        default: micro_i4<4, 2>(xp, qp, sp, mp, xs, bp, yp, K, N, G, m0, n, next); break;
      }
    };
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) walk_tile<2>(M, N, t * kTileN, std::min(N, (t + 1) * kTileN), micro, micro1);
    });
  }
  return y;
}

// Whole-weight dequantization to bf16, for prefill: with many input rows oneDNN's bf16 matmul on the
// expanded weight beats any dot-product kernel, and expanding costs one pass over the weight.
torch::Tensor int8_dequantize(torch::Tensor q, torch::Tensor scale) {
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.size(1) % 32 == 0, "int8 [N, K] expected");
  q = q.contiguous();
  auto sc = scale.to(at::kFloat).contiguous();
  const int64_t N = q.size(0), K = q.size(1), G = int8_group(sc, N, K), ng = K / G;
  auto w = torch::empty({N, K}, q.options().dtype(at::kBFloat16));
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  auto* wp = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t k = 0; k < K; k += 32) {
        const __m512 s = _mm512_set1_ps(sp[n * ng + k / G]);
        const int8_t* p = qp + n * K + k;
        const __m512 lo = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
        const __m512 hi = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))));
        _mm512_storeu_si512(wp + n * K + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }
  });
  return w;
}

torch::Tensor int4_dequantize(torch::Tensor q, torch::Tensor scales, torch::Tensor mins, int64_t group_size) {
  TORCH_CHECK(q.scalar_type() == at::kByte && q.dim() == 2, "uint8 [N, K/2] expected");
  q = q.contiguous();
  auto sc = scales.to(at::kFloat).contiguous();
  auto mn = mins.to(at::kFloat).contiguous();
  const int64_t N = q.size(0), K = 2 * q.size(1), G = group_size, ng = K / G;
  TORCH_CHECK(K % 64 == 0 && K % G == 0 && G >= 32 && (G & (G - 1)) == 0 && sc.size(1) == ng, "shape mismatch");
  const int shift = __builtin_ctzll(G);  // G is a power of two: no integer division in the loop
  auto w = torch::empty({N, K}, q.options().dtype(at::kBFloat16));
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const float* sp = sc.data_ptr<float>();
  const float* mp = mn.data_ptr<float>();
  auto* wp = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t k = 0; k < K; k += 64) {
        const __m128i* p = reinterpret_cast<const __m128i*>(qp + n * (K / 2) + k / 2);
        for (int h = 0; h < 2; ++h) {  // bytes 0-15, then 16-31, of the block
          const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(p + h));
          const __m512i lo = _mm512_and_si512(b, _mm512_set1_epi32(0xF));
          const __m512i hi = _mm512_srli_epi32(b, 4);
          const int64_t klo = k + 16 * h, khi = k + 32 + 16 * h;  // the inputs these nibbles hold
          const float* s = sp + n * ng;
          const float* m = mp + n * ng;
          const __m512 wlo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_set1_ps(s[klo >> shift]), _mm512_set1_ps(m[klo >> shift]));
          const __m512 whi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_set1_ps(s[khi >> shift]), _mm512_set1_ps(m[khi >> shift]));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + n * K + klo), (__m256i)_mm512_cvtneps_pbh(wlo));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + n * K + khi), (__m256i)_mm512_cvtneps_pbh(whi));
        }
      }
    }
  });
  return w;
}

// -- the batch-1 decode step's linear layers (see kernels.h): the same kernels and row grouping as int8_linear
// and int4_linear at M = 1 (tile-aligned ranges keep int4's 4-row groups), so the results are the same bits.
void linear_row_prepare(const LinearRow& p, const uint16_t* x, RowScratch& s) {
  if (p.kind == 0) return;
  if (int8_activations()) {
    quantize_row_q8(x, p.K, s.q);
    return;
  }
  const int64_t ng = p.K / p.G;
  s.xsum.assign(ng, 0.f);
  if (p.kind == 1) s.x16.resize(p.K);
  for (int64_t i = 0; i < p.K; ++i) {
    const float v = bf16_to_float(x[i]);
    s.xsum[i / p.G] += v;
    if (p.kind == 1) s.x16[i] = at::BFloat16(16.f * v).x;
  }
}

void linear_row_compute(const LinearRow& p, const uint16_t* x, const RowScratch& s, uint16_t* y, int64_t n0,
                        int64_t n1) {
  auto* yp = reinterpret_cast<at::BFloat16*>(y);
  if (p.kind == 0) {
    bf16_linear_rows(x, 1, p.K, static_cast<const uint16_t*>(p.w), p.bias_bf16, yp, p.N, n0, n1);
    return;
  }
  if (int8_activations()) {
    const QuantRow* row = &s.q;
    vnni_linear_rows(&row, 1, p, yp, p.N, n0, n1);
    return;
  }
  const Scales sc{p.scales, p.scale_type};
  const float* xsum = s.xsum.data();
  if (p.kind == 1) {
    const auto* q = static_cast<const int8_t*>(p.w);
    for (int64_t n = n0; n < n1; ++n)
      micro_i8<1, 1, true>(x, s.x16.data(), xsum, q, sc, p.bias_f32, yp, p.K, p.N, p.G, 0, n, -1);
    return;
  }
  const Scales mn{p.mins, p.scale_type};
  const auto* q = static_cast<const uint8_t*>(p.w);
  auto micro = [&](int64_t, int64_t m0, int64_t n, int64_t next) {
    micro_i4<1, 4>(x, q, sc, mn, xsum, p.bias_f32, yp, p.K, p.N, p.G, m0, n, next);
  };
  auto micro1 = [&](int64_t, int64_t m0, int64_t n) {
    micro_i4<1, 1>(x, q, sc, mn, xsum, p.bias_f32, yp, p.K, p.N, p.G, m0, n, -1);
  };
  for (int64_t t0 = n0; t0 < n1; t0 += kTileN) walk_tile<4>(1, p.N, t0, std::min(n1, t0 + kTileN), micro, micro1);
}

// int8 / int4 weight x int8 activation dot products on AVX512-VNNI, for quantized matmuls of a few rows.
//
// Why: the bf16 route (quant_kernels.cpp) turns every 32 weights into an exact bf16 vector and runs the bf16
// dot-product instruction, 32 multiply-adds per instruction plus the unpacking; at one row it is compute-bound
// at about half of what the memory could deliver. Like llama.cpp, this route quantizes each input row to int8
// in blocks of 32 (scale = max|x| / 127, round to nearest) and uses vpdpbusd, 64 multiply-adds per instruction
// on bytes as they lie in memory. The weights are still exactly the stored ones; the activations carry a
// relative rounding error of at most 1/254 per block.
//
// Per 32-input block b of an output row: y += s_b * dx_b * sum(w_q * x_q) (+ m_b * dx_b * sum(x_q) for int4,
// whose codes are unsigned 0..15 with a minimum). vpdpbusd wants one unsigned operand: int4 codes are; int8
// weights become w + 128 (their sign bit flipped), corrected by -128 * sum(x_q) per block. A vpdpbusd covers
// two blocks (lanes 0-7 and 8-15); sixteen blocks' sums are reduced together with one transposition, then
// scaled with two vector multiply-adds.
#include "kernels.h"
#include "simd.h"
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

using namespace llmasos_simd;

constexpr int64_t kTileN = 32;  // weight rows per parallel task (as in quant_kernels.cpp)

// Sixteen blocks' scales of one weight row, starting at block b0: scale of block b is that of group b*32/G.
inline __m512 block_scales(Scales s, int64_t row_base, int64_t b0, int64_t nb, int64_t G) {
  const __mmask16 m = lanes16(nb);
  if (G == 32) return s.load16(row_base + b0, m);
  const int64_t g0 = b0 * 32 / G, g1 = (b0 + nb - 1) * 32 / G;
  if (g0 == g1)  // all in one group (e.g. one scale per row)
    return _mm512_maskz_mov_ps(m, _mm512_set1_ps(s[row_base + g0]));
  if ((G & (G - 1)) == 0 && G <= 512) {
    // b0 is a multiple of 16, so the blocks start a group: block b0 + j has scale g0 + j / (G / 32). One load
    // and one permutation; the scalar gather below cost 4x the whole kernel at groups of 64 and 128 (a store
    // of 16 floats, then a vector load of them, per row and 512 inputs).
    const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          static_cast<unsigned>(__builtin_ctzll(static_cast<uint64_t>(G / 32))));
    return _mm512_maskz_permutexvar_ps(m, idx, s.load16(row_base + g0, lanes16(g1 - g0 + 1)));
  }
  alignas(64) float tmp[16] = {0};
  for (int64_t j = 0; j < nb; ++j) tmp[j] = s[row_base + (b0 + j) * 32 / G];
  return _mm512_load_ps(tmp);
}

// Where block_sums' transposition leaves block b's sum, when vector i holds blocks (2i, 2i+1) (int8) or, in
// pairs of vectors, (4c, 4c+2) and (4c+1, 4c+3) (int4's 128-input steps).
constexpr int kInt8Order[16] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
constexpr int kInt4Order[16] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};

// Eight vectors of two block sums each (lanes 0-7 and 8-15) -> one vector with the sixteen block sums in block
// order (`order`: see above).
inline __m512i block_sums(const __m512i* v, const int* order) {
  __m512i t[4], u[2];
  for (int i = 0; i < 4; ++i)  // within 128-bit lanes: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 2; ++i) {  // within 128-bit lanes: one sum of 4 for each of 4 vectors
    const __m512 a = _mm512_castsi512_ps(t[2 * i]), b = _mm512_castsi512_ps(t[2 * i + 1]);
    u[i] = _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0))),
                            _mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2))));
  }
  // 128-bit lanes (0,1) of a vector hold its block 2i, (2,3) its block 2i+1: add them pairwise.
  const __m512i s = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // s holds [v0..v3 lanes 0-7 | v0..v3 lanes 8-15 | v4..v7 lanes 0-7 | v4..v7 lanes 8-15]; put blocks in order.
  return _mm512_permutexvar_epi32(_mm512_loadu_si512(order), s);
}

}  // namespace

// One input row quantized to int8 in blocks of 32 (see QuantRow in kernels.h).
void quantize_row_q8(const uint16_t* x, int64_t K, QuantRow& out) {
  const int64_t nb = K / 32;
  out.q.resize(K);
  out.d.assign(nb + 16, 0.f);  // padded to whole 16-block chunks
  out.sum.assign(nb + 16, 0);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(x + b * 32))), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(x + b * 32 + 16))), 16));
    const float amax = std::max(_mm512_reduce_max_ps(_mm512_abs_ps(lo)), _mm512_reduce_max_ps(_mm512_abs_ps(hi)));
    const float d = amax / 127.f;
    const __m512 inv = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f);
    const __m512i qlo = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(lo, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512i qhi = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(hi, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + b * 32), _mm512_cvtsepi32_epi8(qlo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + b * 32 + 16), _mm512_cvtsepi32_epi8(qhi));
    out.d[b] = d;
    out.sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
  }
  // The int4 kernel's order: in every whole 128-input chunk, inputs 0-31, 64-95, 32-63, 96-127.
  out.q4.assign(out.q.begin(), out.q.end());
  for (int64_t c = 0; c + 128 <= K; c += 128) {
    std::memcpy(out.q4.data() + c + 32, out.q.data() + c + 64, 32);
    std::memcpy(out.q4.data() + c + 64, out.q.data() + c + 32, 32);
  }
}

// Rows [n0, n1) of y = x @ W.T for MC input rows (quantized), W int8 (kind 1) or packed int4 (kind 2).
template <int MC, bool kInt4>
static void vnni_rows(const QuantRow* const* xq, const LinearRow& p, at::BFloat16* y, int64_t ystride, int64_t n0,
                      int64_t n1) {
  const int64_t K = p.K, nb = K / 32, ng = K / p.G;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), nib = _mm512_set1_epi8(0x0F);
  // For int4: one 32-byte load holds 64 codes (low nibbles: inputs 0-31, high: 32-63); broadcast it to both
  // halves and shift the upper half's bytes right by 4.
  const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[MC];
    for (int i = 0; i < MC; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
      const int64_t cnt = std::min<int64_t>(16, nb - b0);
      __m512i part[MC][8];
      for (int i = 0; i < MC; ++i)
        for (int j = 0; j < 8; ++j) part[i][j] = _mm512_setzero_si512();
      if constexpr (kInt4) {
        // 128 inputs per step: one 64-byte load holds two packed 64-input blocks A and B; its low nibbles are
        // inputs 0-31 of A and of B, its high nibbles 32-63 of each, matched by the input row's `q4` layout.
        // part[j] then holds blocks (2j, 2j+2) and part[j+1] (2j+1, 2j+3), which kInt4Order undoes.
        const auto* wrow = static_cast<const uint8_t*>(p.w) + n * (K / 2);
        int64_t j = 0;
        for (; 2 * j + 3 < cnt; j += 2) {
          const int64_t k = (b0 + 2 * j) * 32;
          const __m512i v = _mm512_loadu_si512(wrow + k / 2);
          const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
          for (int i = 0; i < MC; ++i) {
            const int8_t* xs = xq[i]->q4.data() + k;
            part[i][j] = _mm512_dpbusd_epi32(part[i][j], lo, _mm512_loadu_si512(xs));
            part[i][j + 1] = _mm512_dpbusd_epi32(part[i][j + 1], hi, _mm512_loadu_si512(xs + 64));
          }
        }
        if (2 * j < cnt) {  // a last lone 64-input block: its two 32-blocks go where the layout above puts them
          const int64_t k = (b0 + 2 * j) * 32;
          const __m512i w = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(wrow + k / 2))), shifts), nib);
          for (int i = 0; i < MC; ++i) {
            const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(xq[i]->q4.data() + k));
            part[i][j] = _mm512_maskz_mov_epi32(0x00FF, t);
            part[i][j + 1] = _mm512_maskz_mov_epi32(0x00FF, _mm512_shuffle_i32x4(t, t, _MM_SHUFFLE(1, 0, 3, 2)));
          }
        }
      } else {
        for (int64_t j = 0; 2 * j < cnt; ++j) {  // two blocks (64 inputs) per step
          const int64_t k = (b0 + 2 * j) * 32;
          const bool full = 2 * j + 1 < cnt;
          const auto* src = static_cast<const int8_t*>(p.w) + n * K + k;
          const __m512i w =
              _mm512_xor_si512(full ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, src), flip);
          for (int i = 0; i < MC; ++i) {
            const int8_t* xs = xq[i]->q.data() + k;
            const __m512i xv = full ? _mm512_loadu_si512(xs) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, xs);
            part[i][j] = _mm512_dpbusd_epi32(part[i][j], w, xv);
          }
        }
      }
      const __m512 s = block_scales(Scales{p.scales, p.scale_type}, n * ng, b0, cnt, p.G);
      // Q4_0's minimum is -8 x scale: folded into the integer sums (dots - 8 sum(x_q)), its table never read.
      const bool sym8 = kInt4 && p.sym8;
      __m512 mn = _mm512_setzero_ps();
      if (kInt4 && !sym8) mn = block_scales(Scales{p.mins, p.scale_type}, n * ng, b0, cnt, p.G);
      for (int i = 0; i < MC; ++i) {
        const __m512 dx = _mm512_loadu_ps(xq[i]->d.data() + b0);  // zero past the last block
        const __m512i qs = _mm512_loadu_si512(xq[i]->sum.data() + b0);
        __m512i dots = block_sums(part[i], kInt4 ? kInt4Order : kInt8Order);
        if constexpr (!kInt4) dots = _mm512_sub_epi32(dots, _mm512_slli_epi32(qs, 7));  // the +128 of the weights
        if (sym8) dots = _mm512_sub_epi32(dots, _mm512_slli_epi32(qs, 3));
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dots), s), dx, acc[i]);
        if (kInt4 && !sym8) acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(qs), mn), dx, acc[i]);
      }
    }
    for (int i = 0; i < MC; ++i) {
      float v = _mm512_reduce_add_ps(acc[i]);
      if (p.bias_f32) v += p.bias_f32[n];
      y[i * ystride + n] = at::BFloat16(v);
    }
  }
}

// int8 / int4 interleaved by 16 rows: each 32-bit lane of a vector belongs to one output row, so a block's dot
// products come out of eight vpdpbusd as sixteen row sums, scaled as they are, with no transposition and no
// final horizontal sum (llama.cpp repacks Q4_0 the same way). Layout, per 16-row group g and 32-input block b,
// scales (and int4's mins) following as [N/16, K/32, 16]:
//   int4: 256 bytes, four 64-byte vectors u = 0..3; lane j's 4 bytes in vector u hold row 16g+j's inputs
//   32b+8u+i (low nibble) and 32b+8u+4+i (high nibble), i = 0..3;
//   int8: 512 bytes, eight vectors; lane j's 4 bytes in vector t hold row 16g+j's inputs 32b+4t..32b+4t+3.
//   vpdpbusd wants unsigned weights: their sign bit is flipped at the load (w + 128), and 128 x sum(x_q) taken
//   off each block's sums.
// Either way step u multiplies two weight vectors by input bytes 8u..8u+3 and 8u+4..8u+7, into two chains per
// input row (vpdpbusd's latency, not its throughput, bounds one row).
template <int MC, bool kInt4>
static void vnni_rows_i16(const QuantRow* const* xq, const LinearRow& p, at::BFloat16* y, int64_t ystride,
                          int64_t n0, int64_t n1) {
  constexpr int64_t kBlockBytes = kInt4 ? 256 : 512;
  const int64_t nb = p.K / 32;
  const __m512i nib = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const Scales sc{p.scales16, p.scale_type}, mn{p.mins16, p.scale_type};
  const bool with_min = kInt4 && !p.sym8;
  // Subtracted per block, times sum(x_q): int8's +128 offset, or Q4_0's minimum folded into the integer sums.
  const int32_t offset = kInt4 ? (p.sym8 ? 8 : 0) : 128;
  for (int64_t g = n0 / 16; g < n1 / 16; ++g) {
    __m512 acc[MC];
    for (int i = 0; i < MC; ++i) acc[i] = _mm512_setzero_ps();
    const uint8_t* wg = p.w16 + g * nb * kBlockBytes;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* wb = wg + b * kBlockBytes;
      __m512i sum0[MC], sum1[MC];
      for (int i = 0; i < MC; ++i) sum0[i] = sum1[i] = _mm512_setzero_si512();
      for (int u = 0; u < 4; ++u) {
        __m512i w0, w1;
        if constexpr (kInt4) {
          const __m512i v = _mm512_loadu_si512(wb + 64 * u);
          w0 = _mm512_and_si512(v, nib);
          w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
        } else {
          w0 = _mm512_xor_si512(_mm512_loadu_si512(wb + 128 * u), flip);
          w1 = _mm512_xor_si512(_mm512_loadu_si512(wb + 128 * u + 64), flip);
        }
        for (int i = 0; i < MC; ++i) {
          int32_t x4[2];
          std::memcpy(x4, xq[i]->q.data() + b * 32 + 8 * u, 8);
          sum0[i] = _mm512_dpbusd_epi32(sum0[i], w0, _mm512_set1_epi32(x4[0]));
          sum1[i] = _mm512_dpbusd_epi32(sum1[i], w1, _mm512_set1_epi32(x4[1]));
        }
      }
      const __m512 s = sc.load16((g * nb + b) * 16, 0xFFFF);
      const __m512 m = with_min ? mn.load16((g * nb + b) * 16, 0xFFFF) : _mm512_setzero_ps();
      for (int i = 0; i < MC; ++i) {
        const int32_t qs = xq[i]->sum[b];
        const __m512 dx = _mm512_set1_ps(xq[i]->d[b]);
        __m512i d = _mm512_add_epi32(sum0[i], sum1[i]);
        if (offset) d = _mm512_sub_epi32(d, _mm512_set1_epi32(offset * qs));
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), s), dx, acc[i]);
        if (with_min) acc[i] = _mm512_fmadd_ps(m, _mm512_mul_ps(dx, _mm512_set1_ps(static_cast<float>(qs))), acc[i]);
      }
    }
    for (int i = 0; i < MC; ++i) {
      __m512 v = acc[i];
      if (p.bias_f32) v = _mm512_add_ps(v, _mm512_loadu_ps(p.bias_f32 + g * 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * ystride + g * 16), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

void set_interleaved(LinearRow& p, const c10::optional<torch::Tensor>& interleaved) {
  if (!interleaved.has_value() || !interleaved->defined()) return;
  const auto& t = *interleaved;
  const int64_t es = c10::elementSize(p.scale_type), groups = p.N * (p.K / 32);
  const int64_t code_bytes = p.kind == 1 ? p.N * p.K : p.N * p.K / 2, tables = p.kind == 1 ? 1 : 2;
  TORCH_CHECK((p.kind == 1 || p.kind == 2) && p.G % 32 == 0 && p.N % 16 == 0 && t.scalar_type() == at::kByte &&
                  t.is_contiguous() && t.numel() == code_bytes + tables * groups * es,
              "interleaved int8/int4: a uint8 tensor of codes, then scales (and mins) per 32 inputs, for 16-row "
              "blocks expected");
  p.w16 = t.data_ptr<uint8_t>();
  p.scales16 = p.w16 + code_bytes;
  p.mins16 = p.kind == 2 ? static_cast<const uint8_t*>(p.scales16) + groups * es : nullptr;
}

using RowsKernel = void (*)(const QuantRow* const*, const LinearRow&, at::BFloat16*, int64_t, int64_t, int64_t);
// [input rows - 1][int4]: the plain layout's kernels and the 16-row-interleaved copy's.
constexpr RowsKernel kPlainRows[4][2] = {{vnni_rows<1, false>, vnni_rows<1, true>},
                                         {vnni_rows<2, false>, vnni_rows<2, true>},
                                         {vnni_rows<3, false>, vnni_rows<3, true>},
                                         {vnni_rows<4, false>, vnni_rows<4, true>}};
constexpr RowsKernel kInterleavedRows[4][2] = {{vnni_rows_i16<1, false>, vnni_rows_i16<1, true>},
                                               {vnni_rows_i16<2, false>, vnni_rows_i16<2, true>},
                                               {vnni_rows_i16<3, false>, vnni_rows_i16<3, true>},
                                               {vnni_rows_i16<4, false>, vnni_rows_i16<4, true>}};

void vnni_linear_rows(const QuantRow* const* xq, int64_t M, const LinearRow& p, at::BFloat16* y, int64_t ystride,
                      int64_t n0, int64_t n1) {
  const auto& kernels = p.w16 && n0 % 16 == 0 && n1 % 16 == 0 ? kInterleavedRows : kPlainRows;
  const int int4 = p.kind == 2;
  // Up to 4 input rows share each loaded weight vector (more would spill the accumulators).
  for (int64_t m0 = 0; m0 < M; m0 += 4)
    kernels[std::min<int64_t>(4, M - m0) - 1][int4](xq + m0, p, y + m0 * ystride, ystride, n0, n1);
}

// The whole matmul for a few rows (the torch-facing entry point; decode_step.cpp calls the pieces itself).
torch::Tensor vnni_linear(torch::Tensor x, const LinearRow& p) {
  x = x.contiguous();
  const int64_t M = x.size(0);
  std::vector<QuantRow> rows(M);
  std::vector<const QuantRow*> ptrs(M);
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  for (int64_t m = 0; m < M; ++m) {
    quantize_row_q8(xp + m * p.K, p.K, rows[m]);
    ptrs[m] = &rows[m];
  }
  auto y = torch::empty({M, p.N}, x.options());
  auto* yp = y.data_ptr<at::BFloat16>();
  const int64_t tiles = (p.N + kTileN - 1) / kTileN;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    vnni_linear_rows(ptrs.data(), M, p, yp, p.N, begin * kTileN, std::min(p.N, end * kTileN));
  });
  return y;
}

namespace {

LinearRow quant_plan(int64_t kind, const torch::Tensor& q, const torch::Tensor& scales, const torch::Tensor* mins,
                     int64_t group, const c10::optional<torch::Tensor>& bias, torch::Tensor& bias_f32) {
  TORCH_CHECK(q.is_contiguous() && scales.is_contiguous() && (!mins || mins->is_contiguous()), "contiguous expected");
  LinearRow p;
  p.kind = kind;
  p.N = q.size(0);
  p.K = kind == 2 ? 2 * q.size(1) : q.size(1);
  p.G = kind == 1 && scales.dim() == 1 ? p.K : (kind == 1 ? p.K / scales.size(1) : group);
  TORCH_CHECK(p.K % 32 == 0 && p.G % 32 == 0 && p.K % p.G == 0, "unsupported quantized layout");
  p.w = q.data_ptr();
  p.scales = scales.data_ptr();
  p.scale_type = scales.scalar_type();
  p.mins = mins ? mins->data_ptr() : nullptr;
  if (bias.has_value() && bias->defined()) {
    bias_f32 = bias->to(at::kFloat).contiguous();
    p.bias_f32 = bias_f32.data_ptr<float>();
  }
  return p;
}

}  // namespace

// y = x @ (q * scale).T + bias with x quantized to int8 per 32 inputs (VNNI; see the top of this file).
torch::Tensor int8_linear_q8a(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                              c10::optional<torch::Tensor> interleaved) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && q.scalar_type() == at::kChar && x.dim() == 2 && x.size(1) == q.size(1),
              "bf16 x [M, K] and int8 q [N, K] expected");
  torch::Tensor b;
  LinearRow p = quant_plan(1, q.contiguous(), scale.contiguous(), nullptr, 0, bias, b);
  set_interleaved(p, interleaved);
  return vnni_linear(x, p);
}

torch::Tensor int4_linear_q8a(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                              int64_t group_size, c10::optional<torch::Tensor> bias, bool sym8,
                              c10::optional<torch::Tensor> interleaved) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && q.scalar_type() == at::kByte && x.dim() == 2 &&
                  x.size(1) == 2 * q.size(1) && x.size(1) % 64 == 0 && scales.scalar_type() == mins.scalar_type(),
              "bf16 x [M, K] and packed int4 q [N, K/2] expected");
  torch::Tensor b;
  const auto mn = mins.contiguous();
  LinearRow p = quant_plan(2, q.contiguous(), scales.contiguous(), &mn, group_size, bias, b);
  p.sym8 = sym8;
  set_interleaved(p, interleaved);
  return vnni_linear(x, p);
}

// Small AVX-512 helpers shared by the kernel files.
#pragma once
#include <torch/extension.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>

namespace llmasos_simd {

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// A mask of the first min(left, 16) lanes.
inline __mmask16 lanes16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// A table of quantization scales (or minimums) in whichever float type it is stored: fp32, bf16 or fp16.
struct Scales {
  const void* p = nullptr;
  at::ScalarType type = at::kFloat;
  inline float operator[](int64_t i) const {
    switch (type) {
      case at::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
      case at::kHalf: return _cvtsh_ss(static_cast<const uint16_t*>(p)[i]);
      default: return static_cast<const float*>(p)[i];
    }
  }
  // Up to 16 consecutive values as fp32 lanes (lanes outside `mask` are zero).
  inline __m512 load16(int64_t i, __mmask16 mask) const {
    const auto* h = static_cast<const uint16_t*>(p) + i;
    switch (type) {
      case at::kBFloat16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, h)), 16));
      case at::kHalf: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, h));
      default: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + i);
    }
  }
};

}  // namespace llmasos_simd

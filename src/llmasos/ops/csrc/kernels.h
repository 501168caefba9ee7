// The entry points of the native CPU kernels, shared by the translation units of one extension module
// (cpu_kernels.cpp: bf16 matmul, attention, norms; quant_kernels.cpp: int8/int4;
// decode_step.cpp: the one-call decode step).
#pragma once
#include <torch/extension.h>
#include <vector>

torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias);
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                          c10::optional<torch::Tensor> interleaved = c10::nullopt);
// `sym8`: the mins are -8 x the scales (GGUF's Q4_0); the VNNI kernel then folds them into its integer sums.
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                          int64_t group_size, c10::optional<torch::Tensor> bias, bool sym8 = false,
                          c10::optional<torch::Tensor> interleaved = c10::nullopt);
std::vector<torch::Tensor> rms_norm(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor weight,
                                    double eps);
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin);
torch::Tensor silu_mul(torch::Tensor h);
void write_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor k, torch::Tensor v, torch::Tensor slots);
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale);
torch::Tensor decode_layers(torch::Tensor x, const std::vector<c10::optional<torch::Tensor>>& norms,
                            const std::vector<c10::optional<torch::Tensor>>& linears,
                            const std::vector<int64_t>& kinds, const std::vector<int64_t>& row_limits,
                            const std::vector<double>& eps, const std::vector<torch::Tensor>& k_caches,
                            const std::vector<torch::Tensor>& v_caches, torch::Tensor slots, torch::Tensor cos,
                            torch::Tensor sin, torch::Tensor block_tables, torch::Tensor context_lens,
                            int64_t heads, int64_t kv_heads, int64_t head_dim, double scale,
                            torch::Tensor final_norm, double final_eps);
// -- pieces of the batch-1 decode step (decode_step.cpp runs them on its own threads) ---------------------
void bf16_linear_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, const at::BFloat16* bias,
                      at::BFloat16* y, int64_t N, int64_t n0, int64_t n1);
void rms_norm_row(const uint16_t* x, const uint16_t* residual, const uint16_t* w, int64_t H, float eps, uint16_t* out,
                  uint16_t* sum);
void rope_row(const uint16_t* x, int64_t heads, int64_t D, const uint16_t* cos, const uint16_t* sin, uint16_t* out);
void silu_mul_row(const uint16_t* h, int64_t I, uint16_t* out);
int64_t decode_attention_splits(int64_t batch, int64_t threads);
void decode_attention_chunk(const uint16_t* q, const uint16_t* k_cache, const uint16_t* v_cache, const int64_t* table,
                            int64_t block_size, int64_t t0, int64_t t1, int64_t Hq, int64_t Hkv, int64_t D, float scale,
                            float* pm, float* ps, float* pa, std::vector<float>& scores,
                            std::vector<const uint16_t*>& vrow);
void decode_attention_merge(const float* pm, const float* ps, const float* pa, int64_t splits, int64_t Hq, int64_t D,
                            at::BFloat16* out);

// One linear layer with one input row, resolved to raw pointers: kind 0 bf16 (w), 1 int8 (q, scales), 2 int4
// (packed q, scales, mins, group G). `prepare` computes what the kernel needs of x (int8: 16 x and group
// sums; int4: group sums) into caller-owned buffers of K values; `rows` computes outputs [n0, n1).
struct LinearRow {
  int64_t kind = 0, N = 0, K = 0, G = 0;
  const void* w = nullptr;
  const void* scales = nullptr;
  const void* mins = nullptr;
  bool sym8 = false;  // int4 whose minimum is -8 x scale (GGUF's Q4_0): the VNNI kernel never reads the mins
  // int8 / int4 may carry a copy interleaved by 16 rows (QuantLinear.interleave; vnni_kernels.cpp): its codes,
  // then its scales (and int4's mins) per 32 inputs as [N/16, K/32, 16]. The VNNI kernels then read that instead.
  const uint8_t* w16 = nullptr;
  const void* scales16 = nullptr;
  const void* mins16 = nullptr;
  at::ScalarType scale_type = at::kFloat;
  const at::BFloat16* bias_bf16 = nullptr;  // kind 0
  const float* bias_f32 = nullptr;          // kinds 1, 2
};

// One input row quantized to int8 in blocks of 32 for the VNNI kernels (vnni_kernels.cpp): q [K], and per block
// the scale d and sum(q), padded with zeros to whole 16-block chunks.
struct QuantRow {
  std::vector<int8_t> q;
  std::vector<int8_t> q4;  // q in the int4 kernel's input order (see vnni_kernels.cpp)
  std::vector<float> d;
  std::vector<int32_t> sum;
};
void quantize_row_q8(const uint16_t* x, int64_t K, QuantRow& out);
// Point `p` (an int4 layer with groups of 32) at its 16-row-interleaved copy, if it has one.
void set_interleaved(LinearRow& p, const c10::optional<torch::Tensor>& interleaved);
void vnni_linear_rows(const QuantRow* const* xq, int64_t M, const LinearRow& p, at::BFloat16* y, int64_t ystride,
                      int64_t n0, int64_t n1);
torch::Tensor vnni_linear(torch::Tensor x, const LinearRow& p);

// Whether int8 / int4 layers with one or two input rows (decoding a stream or two) quantize them to int8 and
// run the VNNI kernels (default) or keep bf16 inputs and run the bf16 kernels of quant_kernels.cpp (exact
// activations, slower at one row).
bool int8_activations();
void set_int8_activations(bool on);

// What a kernel needs of one input row, computed once per row (`prepare`), then any output rows (`compute`).
struct RowScratch {
  std::vector<uint16_t> x16;  // bf16 int8 kernel: 16 x
  std::vector<float> xsum;    // bf16 int8 / int4 kernels: group sums of x
  QuantRow q;                 // VNNI kernels: x as int8 blocks
};
void linear_row_prepare(const LinearRow& p, const uint16_t* x, RowScratch& s);
void linear_row_compute(const LinearRow& p, const uint16_t* x, const RowScratch& s, uint16_t* y, int64_t n0,
                        int64_t n1);
torch::Tensor int8_linear_q8a(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                              c10::optional<torch::Tensor> interleaved = c10::nullopt);
torch::Tensor int4_linear_q8a(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                              int64_t group_size, c10::optional<torch::Tensor> bias, bool sym8 = false,
                              c10::optional<torch::Tensor> interleaved = c10::nullopt);

torch::Tensor int8_dequantize(torch::Tensor q, torch::Tensor scale);
torch::Tensor int4_dequantize(torch::Tensor q, torch::Tensor scales, torch::Tensor mins, int64_t group_size);

// The entry points of the native CPU kernels, shared by the translation units of one extension module
// (cpu_kernels.cpp: bf16 matmul, attention, norms; quant_kernels.cpp: int8/int4;
// decode_step.cpp: the one-call decode step).
#pragma once
#include <torch/extension.h>
#include <vector>

torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias);
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias);
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                          int64_t group_size, c10::optional<torch::Tensor> bias);
std::vector<torch::Tensor> rms_norm(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor weight,
                                    double eps);
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin);
torch::Tensor silu_mul(torch::Tensor h);
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
torch::Tensor int8_dequantize(torch::Tensor q, torch::Tensor scale);
torch::Tensor int4_dequantize(torch::Tensor q, torch::Tensor scales, torch::Tensor mins, int64_t group_size);

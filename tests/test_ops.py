"""Our bf16 CPU linear kernel against a float64 reference and against torch's own bf16 matmul."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmasos.ops import Linear, linear, native_kernels
from llmasos.ops.cpu_kernels import MAX_ROWS, _cpu_has_avx512_bf16

needs_kernel = pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="CPU lacks AVX512-BF16")


@needs_kernel
def test_kernel_builds_on_a_capable_cpu():
    assert native_kernels() is not None


@needs_kernel
@pytest.mark.parametrize("m,k,n", [(1, 64, 8), (3, 1000, 37), (4, 1024, 96), (7, 33, 5), (MAX_ROWS, 256, 130)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_kernel_matches_reference(m, k, n, with_bias):
    torch.manual_seed(m * k + n)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(n, k, dtype=torch.bfloat16)
    b = torch.randn(n, dtype=torch.bfloat16) if with_bias else None
    ours = native_kernels().bf16_linear(x, w, b).double()
    exact = x.double() @ w.double().t() + (b.double() if with_bias else 0)
    torch_bf16 = F.linear(x, w, b).double()
    # fp32 accumulation then one rounding to bf16: within bf16 resolution of the exact result, and no
    # further from it than torch's own bf16 matmul (plus one bf16 ulp).
    scale = exact.abs().max()
    assert ((ours - exact).abs().max() / scale) < 8e-3
    assert (ours - exact).abs().max() <= (torch_bf16 - exact).abs().max() + scale * 2**-8


def test_linear_dispatch_keeps_shapes_and_falls_back():
    lin = Linear(32, 16).to(torch.bfloat16)
    with torch.inference_mode():
        small = lin(torch.randn(2, 3, 32, dtype=torch.bfloat16))  # 6 rows: kernel where available
        big = lin(torch.randn(MAX_ROWS + 5, 32, dtype=torch.bfloat16))  # over the threshold: torch
        f32 = Linear(32, 16)(torch.randn(4, 32))
    assert small.shape == (2, 3, 16) and big.shape == (MAX_ROWS + 5, 16) and f32.dtype == torch.float32
    # With autograd on, torch's op is used so training gets gradients.
    x = torch.randn(2, 32, requires_grad=True)
    linear(x, torch.randn(16, 32)).sum().backward()
    assert x.grad is not None


@needs_kernel
@pytest.mark.parametrize("group,d", [(1, 64), (2, 128), (4, 64), (7, 32)])
@pytest.mark.parametrize("b", [5, 9])  # small batches split heads across tasks, larger ones do not
def test_paged_decode_attention_matches_torch(group, d, b):
    from llmasos.models.attention import AttentionMetadata, _decode_attention_torch

    torch.manual_seed(group + d)
    nb, bs, hkv = 40, 4, 2
    kc = torch.randn(nb, bs, hkv, d, dtype=torch.bfloat16)
    vc = torch.randn(nb, bs, hkv, d, dtype=torch.bfloat16)
    q = torch.randn(b, hkv * group, d, dtype=torch.bfloat16)
    lens = torch.tensor([1, 4, 5, 17, 30, 2, 32, 9, 16])[:b]
    tables = torch.stack([torch.randperm(nb)[:8] for _ in range(b)])  # scattered, non-contiguous blocks
    meta = AttentionMetadata(slot_mapping=torch.empty(0), block_size=bs, num_decodes=b, decode_block_tables=tables,
                             decode_context_lens=lens, decode_max_len=int(lens.max()))
    ours = native_kernels().paged_decode_attention(q, kc, vc, tables, lens, d**-0.5).double()
    ref = _decode_attention_torch(q.double(), kc.double(), vc.double(), meta, d**-0.5)
    assert (ours - ref).abs().max() < 2e-2

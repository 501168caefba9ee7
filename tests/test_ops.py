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
# 16 or more query heads (group x 2 KV heads) are scored 16 at a time; 18 = 16 + a remainder.
@pytest.mark.parametrize("group,d", [(1, 64), (2, 128), (4, 64), (7, 32), (8, 64), (9, 96), (16, 32)])
@pytest.mark.parametrize("b", [1, 3, 5, 9])  # small batches split each sequence into token chunks
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


@needs_kernel
@pytest.mark.parametrize("m,i", [(1, 3072), (3, 37), (64, 16), (5, 8)])  # odd widths take the masked tail
def test_silu_mul_matches_fp32_reference(m, i):
    from llmasos.ops import swiglu

    torch.manual_seed(m + i)
    h = (torch.randn(m, 2 * i) * 4).to(torch.bfloat16)
    exact = F.silu(h[:, :i].double()) * h[:, i:].double()
    with torch.inference_mode():
        ours = swiglu(h).double()
    torch_bf16 = (F.silu(h[:, :i]) * h[:, i:]).double()
    # fp32 math then one rounding: within one bf16 ulp of the exact value, never worse than torch's two
    # bf16 roundings.
    assert ((ours - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
    assert (ours - exact).abs().max() <= (torch_bf16 - exact).abs().max() + 1e-6
    assert swiglu(h.float()).shape == (m, i)  # fp32 / training: torch's ops


def test_prepacked_linear_equals_plain_and_follows_the_rules():
    from llmasos.ops.cpu_kernels import can_prepack

    lin = Linear(64, 48, bias=True).to(torch.bfloat16)
    x = torch.randn(2, 20, 64, dtype=torch.bfloat16)  # 40 rows: past MAX_ROWS, the prepacked path
    with torch.inference_mode():
        plain = lin(x)
        extra = lin.prepack()
        packed = lin(x)
    if not can_prepack(lin.weight):
        pytest.skip("this torch build has no oneDNN weight prepacking")
    assert extra == 64 * 48 * 2 and lin.packed is not None
    assert torch.equal(packed, plain)  # the same oneDNN kernel, only the weight layout done ahead
    # Training still goes through autograd on the plain weight.
    y = lin(x.float().requires_grad_().to(torch.bfloat16))
    y.sum().backward()
    assert lin.weight.grad is not None
    assert Linear(8, 8).prepack() == 0  # fp32 weights are left alone


@needs_kernel
@pytest.mark.parametrize("h", [64, 1024, 40])  # 40: a masked tail
def test_native_rms_norm_matches_torch_reference(h):
    from llmasos.models.layers import RMSNorm, add_and_norm

    torch.manual_seed(h)
    norm = RMSNorm(h, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(h) * 0.5 + 1)
    x = (torch.randn(7, h) * 3).to(torch.bfloat16)
    r = torch.randn(7, h).to(torch.bfloat16)
    reference = norm.weight * F.rms_norm(x.float(), (h,), eps=1e-5).to(torch.bfloat16)  # torch's route
    ref_sum = x + r
    ref_added = norm.weight * F.rms_norm(ref_sum.float(), (h,), eps=1e-5).to(torch.bfloat16)
    with torch.inference_mode():
        ours = norm(x)
        total, added = add_and_norm(norm, x, r)
    assert torch.equal(total, ref_sum)
    # Same two roundings as the reference; the fp32 sum of squares may differ in its last bit, so allow one
    # bf16 ulp on a handful of elements.
    for a, b in ((ours, reference), (added, ref_added)):
        diff = (a.float() - b.float()).abs()
        assert (diff <= b.float().abs() * 2**-7).all() and (diff > 0).float().mean() < 0.02


@needs_kernel
@pytest.mark.parametrize("d", [32, 64, 128])
def test_native_rope_is_bit_identical_to_torch_reference(d):
    from llmasos.models.layers import RotaryEmbedding, apply_rope

    torch.manual_seed(d)
    rot = RotaryEmbedding(d, 512, 10000.0, None)
    positions = torch.tensor([0, 5, 17, 300, 511])
    cos_sin = rot.lookup(positions, torch.bfloat16)
    fused = torch.randn(5, 3 * 4 * d).to(torch.bfloat16)  # q|k|v rows: rope sees a strided view of q and k
    qk = fused[:, : 2 * 4 * d].unflatten(-1, (8, d))
    reference = apply_rope(qk, cos_sin)  # grad mode on: torch's ops
    with torch.inference_mode():
        ours = apply_rope(qk, cos_sin)
    assert torch.equal(ours, reference)


@needs_kernel
@pytest.mark.parametrize("t,hkv,d", [(1, 2, 32), (64, 8, 64), (1000, 3, 96)])
def test_native_kv_write_equals_index_copy_and_checks_slots(t, hkv, d):
    from llmasos.models.attention import write_kv

    torch.manual_seed(t)
    k_cache = torch.zeros(80, 16, hkv, d, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    fused = torch.randn(t, (2 + 2 * hkv) * d).to(torch.bfloat16)  # q|k|v rows: k and v are strided views
    k = fused[:, 2 * d: (2 + hkv) * d].unflatten(-1, (hkv, d))
    v = fused[:, (2 + hkv) * d:].unflatten(-1, (hkv, d))
    slots = torch.randperm(80 * 16)[:t]
    write_kv(k_cache, v_cache, k, v, slots)
    ref_k, ref_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    ref_k.view(-1, hkv, d).index_copy_(0, slots, k)
    ref_v.view(-1, hkv, d).index_copy_(0, slots, v)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    with pytest.raises(RuntimeError, match="slot out of range"):
        native_kernels().write_kv(k_cache, v_cache, k, v, torch.full((t,), 80 * 16))


@needs_kernel
@pytest.mark.parametrize("n,L,hq,hkv,d", [(128, 128, 16, 8, 64), (37, 100, 4, 2, 32), (5, 5, 2, 1, 128),
                                          (1, 17, 4, 4, 64), (300, 300, 6, 2, 96),
                                          # several 256-key tiles: chunks after a long cached context
                                          (700, 700, 9, 3, 64), (100, 1300, 4, 1, 64), (3, 600, 16, 16, 32)])
def test_prefill_attention_matches_float64_reference(n, L, hq, hkv, d):
    """Causal attention of n queries at the end of an L-token context (L > n: a later chunk of the prompt,
    or a prompt after a cached prefix)."""
    torch.manual_seed(n + L + d)
    q = torch.randn(n, hq, d).to(torch.bfloat16)
    k = torch.randn(L, hkv, d).to(torch.bfloat16)
    v = torch.randn(L, hkv, d).to(torch.bfloat16)
    g = hq // hkv
    qq = q.double().transpose(0, 1)
    kk = k.double().repeat_interleave(g, 1).transpose(0, 1)
    vv = v.double().repeat_interleave(g, 1).transpose(0, 1)
    visible = torch.arange(L)[None, :] <= torch.arange(n)[:, None] + (L - n)
    ref = ((qq @ kk.transpose(-1, -2) * d**-0.5).masked_fill(~visible, float("-inf")).softmax(-1) @ vv).transpose(0, 1)
    ours = native_kernels().prefill_attention(q, k, v, d**-0.5).double()
    # bf16 inputs, bf16 probabilities (as flash attention rounds them): about 2^-8 relative per term.
    assert (ours - ref).abs().max() < 2e-2

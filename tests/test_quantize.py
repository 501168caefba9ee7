"""Weight-only quantization: QuantLinear against float64 references, both kernel paths, save/load, the engine,
perplexity and the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmasos.compress.quantize import load_quantized, model_bytes, quantize_model, save_quantized
from llmasos.models.loader import load_model
from llmasos.ops.cpu_kernels import _cpu_has_avx512_bf16
from llmasos.ops.quant_linear import MAX_ROWS, QuantLinear, check_format, dequantize, quant_kernels

needs_kernel = pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="CPU lacks AVX512-BF16")
FORMATS = [(8, 128), (4, 32), (4, 64), (4, 128)]


def _layer(k: int, n: int, bits: int, group: int, bias: bool = True, seed: int = 0) -> tuple[torch.nn.Linear, QuantLinear]:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias).to(torch.bfloat16)
    return lin, QuantLinear.from_linear(lin, bits, group)


def _reference(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    ref = x.double() @ dequantize(layer, torch.float64).t()
    return ref + layer.bias.double() if layer.bias is not None else ref


# -- the layer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,group", FORMATS)
@pytest.mark.parametrize("rows", [1, 3, 8, 20])  # 20 is past MAX_ROWS: expand-then-matmul on CPU
@pytest.mark.parametrize("native", [None, False])
def test_quant_linear_matches_float64_reference(bits, group, rows, native):
    _, layer = _layer(256, 96, bits, group, seed=rows)
    x = torch.randn(rows, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x, native=native).double()
    ref = _reference(x, layer)
    # fp32 accumulation and one rounding to bf16 (plus bf16 weights on the expand path): bf16 resolution.
    assert out.shape == (rows, 96) and out.dtype == torch.float64
    assert ((out - ref).abs().max() / ref.abs().max()) < 8e-3


@pytest.mark.parametrize("bits,group", FORMATS)
def test_float32_path_is_exact_to_fp32(bits, group):
    _, layer = _layer(128, 40, bits, group)
    layer = layer.float()
    x = torch.randn(2, 5, 128)
    out = layer(x)
    assert out.shape == (2, 5, 40) and out.dtype == torch.float32
    ref = _reference(x.reshape(-1, 128), layer).reshape(2, 5, 40)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group,bound", [(8, 128, 0.01), (4, 32, 0.1), (4, 128, 0.13)])
def test_quantization_error_is_bounded(bits, group, bound):
    lin, layer = _layer(512, 128, bits, group, bias=False)
    w, wq = lin.weight.double(), dequantize(layer, torch.float64)
    if bits == 8:  # round to nearest: at most half a step per weight
        assert ((w - wq).abs() <= layer.scales.double()[:, None] / 2 + 1e-6).all()
    x = torch.randn(16, 512).double()
    rel = (x @ wq.t() - x @ w.t()).norm() / (x @ w.t()).norm()
    assert rel < bound


@needs_kernel
@pytest.mark.parametrize("bits,group", FORMATS)
@pytest.mark.parametrize("rows", [1, 2, 4, 5, MAX_ROWS[8], MAX_ROWS[4], 33])
def test_native_and_fallback_paths_agree(bits, group, rows):
    assert quant_kernels() is not None
    _, layer = _layer(384 if group != 128 else 512, 70, bits, group, seed=rows)
    x = torch.randn(rows, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        native, fallback = layer(x, native=None).float(), layer(x, native=False).float()
    assert (native - fallback).abs().max() <= 1e-2 * fallback.abs().max()


def test_packed_buffers_keep_their_dtype():
    _, layer = _layer(64, 32, 4, 32)
    layer.to(torch.float32)
    assert layer.qweight.dtype == torch.uint8 and layer.scales.dtype == torch.bfloat16
    assert layer.bias.dtype == torch.float32
    _, layer8 = _layer(64, 32, 8, 128)
    layer8.to(torch.bfloat16)
    assert layer8.qweight.dtype == torch.int8 and layer8.scales.dtype == torch.float32


@pytest.mark.parametrize("k,bits,group", [(64, 3, 128), (64, 16, 128), (96, 4, 64), (128, 4, 48), (96, 4, 32),
                                          (100, 8, 128)])
def test_bad_formats_are_value_errors(k, bits, group):
    with pytest.raises(ValueError):
        check_format(k, bits, group)
    with pytest.raises(ValueError):
        QuantLinear.from_linear(torch.nn.Linear(k, 8), bits, group)


def test_quantize_model_rejects_bad_input_before_touching_the_model(llama_dir):
    model, _ = load_model(llama_dir, "float32")
    with pytest.raises(ValueError, match="bits"):
        quantize_model(model, bits=3)
    with pytest.raises(ValueError, match="group"):
        quantize_model(model, bits=4, group_size=128)  # the tiny model's hidden size is 64
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    quantize_model(model, bits=8)
    with pytest.raises(ValueError, match="already"):
        quantize_model(model, bits=8)


def test_skip_patterns_and_lm_head(llama_dir):
    model, _ = load_model(llama_dir, "bfloat16")
    quantize_model(model, bits=8, skip=["layers.0.*", "*.down_proj"], lm_head=True)
    assert isinstance(model.layers[0].attn.qkv_proj, torch.nn.Linear)
    assert isinstance(model.layers[1].attn.qkv_proj, QuantLinear)
    assert not isinstance(model.layers[1].mlp.down_proj, QuantLinear)
    assert isinstance(model.lm_head, QuantLinear)


# -- save / load / engine --------------------------------------------------------------------------------
@pytest.mark.parametrize("family,bits,group,lm_head", [
    ("llama", 8, 128, False), ("llama", 4, 64, False), ("qwen2", 4, 32, True), ("gpt2", 8, 128, False),
    ("llama3-rope", 4, 64, True),  # tied embeddings, with the head quantized as its own copy
])
def test_save_load_roundtrip_gives_identical_logits(checkpoints, tmp_path, family, bits, group, lm_head):
    model, src = load_model(checkpoints[family], "bfloat16")
    bytes_before = model_bytes(model)
    quantize_model(model, bits=bits, group_size=group, lm_head=lm_head)
    assert model_bytes(model) < bytes_before
    out = save_quantized(model, tmp_path / "q", src)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "llmasos" and cfg["quantization_config"]["bits"] == bits
    assert (out / "tokenizer.json").is_file()
    loaded, _ = load_model(out, "bfloat16")
    assert loaded.quantization["bits"] == bits
    ids = torch.randint(3, 500, (2, 11))
    with torch.inference_mode():
        assert torch.equal(model(ids), loaded(ids))


def test_float_parts_follow_the_requested_dtype(llama_dir, tmp_path):
    model, src = load_model(llama_dir, "bfloat16")
    out = save_quantized(quantize_model(model, bits=4, group_size=32), tmp_path / "q", src)
    hf = json.loads((out / "config.json").read_text())
    m32 = load_quantized(out, hf, torch.float32)
    assert m32.embed_tokens.weight.dtype == torch.float32
    assert m32.layers[0].mlp.up_proj.qweight.dtype == torch.uint8


def _greedy_dense(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[0, -1].argmax().view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("bits,group", [(8, 128), (4, 32)])
def test_llm_on_a_quantized_dir_generates_like_the_dense_quantized_model(llama_dir, tmp_path, bits, group):
    from llmasos import LLM, SamplingParams

    model, src = load_model(llama_dir, "float32")
    out = save_quantized(quantize_model(model, bits=bits, group_size=group), tmp_path / "q", src)
    prompt = [5, 17, 42, 99, 7]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    # float32: the torch path in both; the paged engine must agree token for token.
    llm = LLM(out, dtype="float32", block_size=4, kv_cache_memory=1 << 20)
    assert llm.generate([prompt], params)[0].token_ids == _greedy_dense(model, prompt, 12)
    # bf16: the native kernels under the engine. Rounding differs between paths, so check each generated token
    # is the dense model's choice (or within bf16 noise of it) given the same prefix.
    llm16 = LLM(out, dtype="bfloat16", block_size=4, kv_cache_memory=1 << 20)
    toks = llm16.generate([prompt], params)[0].token_ids
    dense16, _ = load_model(out, "bfloat16")
    with torch.inference_mode():
        logits = dense16(torch.tensor([prompt + toks]))[0, len(prompt) - 1 : -1].float()
    chosen = logits.gather(1, torch.tensor(toks)[:, None])[:, 0]
    assert (chosen >= logits.max(dim=1).values - 0.05 * logits.abs().max()).all()


# -- quality ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_tiny(llama_dir):
    """The tiny Llama after 20 Adam steps on a small repetitive corpus: a model with a real (low) perplexity,
    so a quantization error shows up in it."""
    from llmasos.kernel.llm import load_tokenizer

    torch.manual_seed(0)
    model, _ = load_model(llama_dir, "float32")
    tok = load_tokenizer(llama_dir)
    text = ("the operating system schedules the model between apps by priority and weight. "
            "the kv cache is virtual memory and the scheduler shares the model fairly. ") * 8
    ids = tok(text)["input_ids"]
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds waiting, a lot of it on a busy machine
    try:
        for _ in range(20):
            starts = torch.randint(0, len(ids) - 33, (8,))
            batch = torch.stack([data[s : s + 33] for s in starts])
            loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, [ids[i : i + 64] for i in range(0, len(ids) - 64, 48)]


@pytest.mark.parametrize("bits,group,tolerance", [(8, 128, 0.01), (4, 32, 0.05), (4, 64, 0.05)])
def test_perplexity_of_the_quantized_model_stays_close(trained_tiny, bits, group, tolerance):
    from llmasos.eval.perplexity import perplexity

    model, texts = trained_tiny
    base = perplexity(model, texts).corpus_ppl
    assert base < 10  # it did learn: a random model's is near the vocabulary size (512)
    quant = perplexity(quantize_model(copy.deepcopy(model), bits=bits, group_size=group), texts).corpus_ppl
    assert abs(quant / base - 1) < tolerance


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_quantize_writes_a_loadable_model(llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmasos.cli import app

    out = tmp_path / "q4"
    res = CliRunner().invoke(app, ["compress", "quantize", "--model", str(llama_dir), "--bits", "4",
                                   "--group-size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "smaller" in res.output and "int4" in res.output
    model, _ = load_model(out)
    assert isinstance(model.layers[0].attn.o_proj, QuantLinear)
    bad = CliRunner().invoke(app, ["compress", "quantize", "--model", str(llama_dir), "--bits", "4",
                                   "--group-size", "128", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()


def test_foreign_quantization_methods_are_refused(llama_dir, tmp_path):
    import shutil

    from llmasos.models.config import UnsupportedModelError

    d = Path(shutil.copytree(llama_dir, tmp_path / "gptq"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="gptq"):
        load_model(d)


def _q8_activations(x: torch.Tensor) -> torch.Tensor:
    """What the VNNI kernels multiply by: each 32-input block of a row rounded to int8 steps of max|x| / 127."""
    xb = x.float().reshape(x.shape[0], -1, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return (torch.round(xb / safe) * d).reshape(x.shape).double()


@needs_kernel
@pytest.mark.parametrize("bits,group,rows,k", [
    (8, None, 1, 640), (8, None, 2, 96), (8, 32, 1, 96), (8, 32, 2, 640), (8, 64, 1, 640),  # 96: odd 32-blocks
    (4, 32, 1, 640), (4, 32, 2, 128), (4, 64, 1, 640), (4, 128, 2, 640),
    (4, 32, 1, 576), (4, 64, 2, 704)])  # a lone 64-input block after whole 128-input chunks
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_activation_kernels_match_their_reference(bits, group, scale_dtype, rows, k):
    """One or two rows through int8/int4 layers run the VNNI kernels: inputs rounded to int8 per 32-input block
    (as llama.cpp does), weights exactly as stored, with any scale dtype and group size. Switched off
    (LLMASOS_INT8_ACTIVATIONS=0) they run the bf16 kernels on the exact inputs."""
    g = torch.Generator().manual_seed(k + rows)
    n = 72
    if bits == 8:
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        scales = (torch.rand(n, *(() if group is None else (k // group,)), generator=g) * 0.02 + 1e-3).to(scale_dtype)
        layer = QuantLinear.from_packed(q, scales, bias=torch.randn(n, generator=g).to(torch.bfloat16))
    else:
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
        from llmasos.ops.quant_linear import pack_int4

        scales = (torch.rand(n, k // group, generator=g) * 0.02 + 1e-3).to(scale_dtype)
        mins = (torch.randn(n, k // group, generator=g) * 0.05).to(scale_dtype)
        layer = QuantLinear.from_packed(pack_int4(codes), scales, mins, group_size=group)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    w = dequantize(layer, torch.float64)
    bias = layer.bias.double() if layer.bias is not None else 0
    ext = quant_kernels()
    with torch.inference_mode():
        out = layer(x).double()
        ext.set_int8_activations(False)
        try:
            exact = layer(x).double()
        finally:
            ext.set_int8_activations(True)
    ref = _q8_activations(x) @ w.t() + bias
    ref_exact = x.double() @ w.t() + bias
    # One rounding of each output to bf16 (2^-9 relative) on top of float32 accumulation.
    assert (out - ref).abs().max() <= 4e-3 * ref.abs().max()
    assert (exact - ref_exact).abs().max() <= 4e-3 * ref_exact.abs().max()
    # int8 activations cost at most 1/254 of each block's largest input per term; on these random layers (large
    # random minimums add up the rounding) up to ~1% of the outputs' maximum (measured), 2% asserted.
    assert (out - ref_exact).abs().max() <= 2e-2 * ref_exact.abs().max()


@needs_kernel
@pytest.mark.parametrize("rows,k", [(1, 640), (2, 576), (1, 704)])  # up to kVnniRows (2) rows
def test_q4_0_layers_fold_their_minimum(rows, k):
    """int4 whose minimums are -8 x its scales (GGUF's Q4_0) is recognised (`sym8`); its VNNI kernel folds the
    minimum into the integer sums and never reads the mins, and gives what the general int4 kernel gives."""
    from llmasos.ops.quant_linear import pack_int4

    g = torch.Generator().manual_seed(k)
    n = 72
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).to(torch.float16)
    layer = QuantLinear.from_packed(pack_int4(codes), scales, (scales.float() * -8).to(torch.float16), group_size=32)
    assert layer.sym8
    assert not QuantLinear.from_packed(pack_int4(codes), scales, (scales.float() * -7).to(torch.float16),
                                       group_size=32).sym8
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    ref = _q8_activations(x) @ dequantize(layer, torch.float64).t()
    with torch.inference_mode():
        folded = layer(x).double()
        layer.sym8 = False
        general = layer(x).double()
    assert (folded - ref).abs().max() <= 4e-3 * ref.abs().max()
    assert (folded - general).abs().max() <= 4e-3 * ref.abs().max()


@needs_kernel
@pytest.mark.parametrize("sym8", [True, False])
@pytest.mark.parametrize("n,k,rows,group", [(64, 640, 1, 32), (96, 576, 2, 32), (32, 704, 1, 32), (48, 640, 7, 128),
                                            (32, 576, 4, 64), (64, 512, 32, 32), (16, 512, 33, 128)])
def test_interleaved_int4_copy_gives_the_same_outputs(sym8, n, k, rows, group):
    """An int4 layer keeps, with its prepacked copy, one interleaved by 16 rows (scales and mins repeated per 32
    inputs) for the VNNI kernel of 1-32 rows (each vector lane one output row, 4 input rows per pass): the
    function of the plain layout, with the activations rounded to int8 per 32 inputs. 33 rows go to oneDNN."""
    from llmasos.ops.quant_linear import INTERLEAVED_MAX_ROWS, pack_int4

    g = torch.Generator().manual_seed(n + k + rows)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group, generator=g) * 0.02 + 1e-3).to(torch.float16)
    mins = (scales.float() * -8).to(torch.float16) if sym8 else (torch.randn(n, k // group, generator=g) * 0.05).half()
    layer = QuantLinear.from_packed(pack_int4(codes), scales, mins, group_size=group,
                                    bias=torch.randn(n, generator=g).to(torch.bfloat16))
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        plain = layer(x).double()
        assert layer.prepack() == layer.prepack_size() > 2 * n * k
        assert layer.interleaved is not None and layer.interleaved.numel() == n * k // 2 + 2 * (n * k // 32) * 2
        assert layer.native_rows() == INTERLEAVED_MAX_ROWS[4]
        interleaved = layer(x).double()
    exact = x.double() @ dequantize(layer, torch.float64).t() + layer.bias.double()
    ref = exact if rows > INTERLEAVED_MAX_ROWS[4] else \
        _q8_activations(x) @ dequantize(layer, torch.float64).t() + layer.bias.double()
    assert (interleaved - ref).abs().max() <= 4e-3 * ref.abs().max()
    # The plain layout ran the VNNI kernel (1-2 rows) or the exact-activation ones: int8 rounding apart.
    assert (interleaved - plain).abs().max() <= 2e-2 * ref.abs().max()
    # A layer whose rows are not a multiple of 16 cannot be interleaved: it keeps only the bf16 copy.
    odd = QuantLinear.from_packed(pack_int4(torch.cat([codes, codes[:8]])), torch.cat([scales, scales[:8]]),
                                  torch.cat([mins, mins[:8]]), group_size=group)
    odd.prepack()
    assert odd.interleaved is None and odd.packed is not None


@needs_kernel
@pytest.mark.parametrize("n,k,rows,per_row", [(64, 640, 2, True), (32, 576, 5, False), (48, 512, 16, False),
                                              (32, 512, 17, True), (16, 256, 1, False)])
def test_interleaved_int8_copy_gives_the_same_outputs(n, k, rows, per_row):
    """An int8 layer keeps an interleaved copy too (scales repeated per 32 inputs): 1-16 rows run its VNNI kernel
    (activations rounded to int8 per 32 inputs), 17 rows oneDNN; all the same function."""
    from llmasos.ops.quant_linear import INTERLEAVED_MAX_ROWS

    g = torch.Generator().manual_seed(n + k + rows)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, generator=g) * 0.01 + 1e-3) if per_row else \
        (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-3).half()
    layer = QuantLinear.from_packed(q, scales, bias=torch.randn(n, generator=g).to(torch.bfloat16))
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        plain = layer(x).double()
        layer.prepack()
        assert layer.interleaved is not None and layer.interleaved.numel() == n * k + (n * k // 32) * scales.element_size()
        assert layer.native_rows() == INTERLEAVED_MAX_ROWS[8]
        interleaved = layer(x).double()
    w = dequantize(layer, torch.float64)
    ref = (x.double() if rows > INTERLEAVED_MAX_ROWS[8] else _q8_activations(x)) @ w.t() + layer.bias.double()
    assert (interleaved - ref).abs().max() <= 4e-3 * ref.abs().max()
    assert (interleaved - plain).abs().max() <= 2e-2 * ref.abs().max()


@needs_kernel
def test_interleaved_copies_are_made_when_only_they_fit_in_memory(monkeypatch):
    """The engine's copies policy: bf16 prepacked copies and the int4 interleaved ones when both fit in a quarter
    of the free RAM; the (4x smaller) interleaved ones alone when only they fit; none when told not to."""
    from llmasos.kernel import model_runner
    from llmasos.ops.quant_linear import pack_int4

    def model() -> torch.nn.Module:
        g = torch.Generator().manual_seed(1)
        s = (torch.rand(64, 8, generator=g) * 0.02 + 1e-3).to(torch.float16)
        q = pack_int4(torch.randint(0, 16, (64, 256), dtype=torch.uint8, generator=g))
        return torch.nn.Sequential(*[QuantLinear.from_packed(q, s, (s.float() * -8).half(), group_size=32)
                                     for _ in range(2)])

    layer_bf16, layer_il = 2 * 64 * 256, 64 * 128 + 2 * 64 * 8 * 2
    m = model()
    monkeypatch.setattr(model_runner, "available_ram", lambda: 4 * 2 * (layer_bf16 + layer_il))
    assert model_runner.prepack_weights(m, None) == 2 * (layer_bf16 + layer_il)
    assert all(x.packed is not None and x.interleaved is not None for x in m)
    m = model()
    monkeypatch.setattr(model_runner, "available_ram", lambda: 4 * 2 * layer_il)
    assert model_runner.prepack_weights(m, None) == 2 * layer_il
    assert all(x.packed is None and x.interleaved is not None for x in m)
    m = model()
    assert model_runner.prepack_weights(m, False) == 0 and all(x.interleaved is None for x in m)

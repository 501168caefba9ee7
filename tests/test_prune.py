"""Pruning on tiny fp32 models: magnitude and Wanda against references, structured rebuilds against masking,
recovery, serving the result, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmasos.compress.common import block_linears, load_fp32
from llmasos.compress.prune import collect_input_norms, prune_unstructured, row_mask, wanda_scores
from llmasos.compress.structured import keep_counts, make_plan, mask_in_place, prune_structured, rebuild

# GQA with 4 KV groups of 2 query heads, so a structured plan keeps a real subset of groups
MODEL = dict(family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def prepared(make_tiny_corpus) -> Path:
    return make_tiny_corpus(300)[2]


@pytest.fixture(scope="module")
def model_dir(prepared, pretrain_tiny) -> Path:
    return pretrain_tiny(MODEL, prepared)


def calib() -> list[torch.Tensor]:
    return list(torch.randint(3, 300, (6, 16), generator=torch.Generator().manual_seed(0)).split(3))


def test_magnitude_hits_the_exact_sparsity_per_row_and_zeroes_the_smallest(model_dir):
    model, _, _ = load_fp32(model_dir)
    before = {n: m.weight.detach().clone() for n, m in block_linears(model).items()}
    prune_unstructured(model, "magnitude", 0.3)
    for name, mod in block_linears(model).items():
        w, w0 = mod.weight, before[name]
        k = int(0.3 * w.shape[1])
        assert ((w == 0).sum(1) == k).all(), name  # no exact zeros in a trained model: only pruned ones are 0
        pruned_max = torch.where(w == 0, w0.abs(), torch.zeros_like(w0)).amax(1)
        kept_min = torch.where(w != 0, w0.abs(), torch.full_like(w0, float("inf"))).amin(1)
        assert (pruned_max <= kept_min).all(), name
        assert torch.equal(w[w != 0], w0[w != 0])  # survivors untouched


def test_wanda_scores_equal_a_hand_computation():
    w = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.25, 4.0]])
    x = torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, 0.0]])  # two tokens, three input channels
    norms = torch.tensor([10**0.5, 4.0, 2.0])  # ||X_j||_2 over tokens
    expected = torch.tensor([[1.0 * 10**0.5, 8.0, 1.0], [3 * 10**0.5, 1.0, 8.0]])
    assert torch.allclose(wanda_scores(w, norms), expected)
    # the hook collects exactly those norms from a layer's inputs
    lin = torch.nn.Linear(3, 2, bias=False)
    from llmasos.compress.prune import input_norms

    with input_norms({"lin": lin}) as got:
        lin(x[:1])
        lin(x[1:].unsqueeze(0))  # any leading shape; sums over every token
    assert torch.allclose(got["lin"], norms)
    # per row, the lowest score goes: row 0 drops column 2 (score 1.0), row 1 column 1 (score 1.0)
    keep = row_mask(expected, 1 / 3)
    assert keep.tolist() == [[True, True, False], [True, False, True]]
    # where they disagree: magnitude drops the 0.5 weight, Wanda the 0.9 one on a quiet channel (1.8 < 2.0)
    w2 = torch.tensor([[1.0, 0.5, 0.9]])
    assert row_mask(w2.abs(), 1 / 3).tolist() == [[True, False, True]]
    assert row_mask(wanda_scores(w2, norms), 1 / 3).tolist() == [[True, True, False]]


def test_wanda_on_a_model_uses_the_real_layer_inputs(model_dir):
    model, _, _ = load_fp32(model_dir)
    ids = calib()
    norms = collect_input_norms(model, ids)
    with torch.no_grad():
        x = torch.cat([model.layers[0].input_norm(model.embed_tokens(b)) for b in ids]).flatten(0, -2)
    assert torch.allclose(norms["layers.0.attn.qkv_proj"], x.norm(dim=0), rtol=1e-5)
    w0 = model.layers[0].attn.qkv_proj.weight.detach().clone()
    masks = prune_unstructured(model, "wanda", 0.5, ids)
    ref = row_mask(w0.abs() * x.norm(dim=0), 0.5)
    assert torch.equal(masks["layers.0.attn.qkv_proj"], ref)
    assert torch.equal(model.layers[0].attn.qkv_proj.weight, w0 * ref)


def test_structured_keep_all_is_an_exact_rebuild(model_dir):
    model, hf, _ = load_fp32(model_dir)
    small, new_hf, plan = prune_structured(model, hf, calib(), 1.0, 1.0)
    ids = torch.randint(3, 300, (2, 11))
    with torch.no_grad():
        assert torch.equal(small(ids), model(ids))
    assert new_hf["num_key_value_heads"] == 4 and new_hf["intermediate_size"] == 64


def test_structured_pruning_equals_masking_and_serves(model_dir, tmp_path):
    from llmasos import LLM, SamplingParams
    from llmasos.compress.common import load_tokenizer
    from llmasos.models.hf_format import save_hf_checkpoint

    model, hf, src = load_fp32(model_dir)
    small, new_hf, plan = prune_structured(model, hf, calib(), 0.5, 0.25)
    cfg = small.config
    assert (cfg.num_kv_heads, cfg.num_heads, cfg.head_dim, cfg.intermediate_size) == (2, 4, 4, 16)
    assert new_hf["head_dim"] == 4 and all(len(k) == 2 for k in plan.kv_keep)
    ids = torch.randint(3, 300, (2, 13))
    with torch.no_grad():
        ref = mask_in_place(model, plan)(ids)  # original shapes, pruned units zeroed
        assert (small(ids) - ref).abs().max() < 1e-5

    save_hf_checkpoint(small, new_hf, tmp_path / "small", tokenizer=load_tokenizer(src))
    reloaded, _, _ = load_fp32(tmp_path / "small")
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (reloaded(ids) - ref).abs().max() < 1e-5
        assert (hf_model(ids).logits - ref).abs().max() < 1e-4
    llm = LLM(str(tmp_path / "small"), dtype="float32", kv_cache_memory=4 << 20)
    out = llm.generate(["the cat"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert len(out[0].token_ids) == 6


def test_plan_groups_query_heads_with_their_kv_head(model_dir):
    model, hf, _ = load_fp32(model_dir)
    heads = [torch.tensor([0.0, 9.0, 1.0, 8.0])] * 2  # groups 1 and 3 win
    ffn = [torch.arange(64.0)] * 2
    small, _ = rebuild(model, hf, make_plan(heads, ffn, 2, 8))
    q_rows = torch.cat([torch.arange(8, 16), torch.arange(24, 32)])  # q heads 2,3 and 6,7 (head_dim 4)
    assert torch.equal(small.layers[0].attn.qkv_proj.weight[:16], model.layers[0].attn.qkv_proj.weight[q_rows])
    assert torch.equal(small.layers[1].mlp.up_proj.weight[8:], model.layers[1].mlp.up_proj.weight[64 + 56:])


def test_recovery_lowers_perplexity_and_keeps_unstructured_zeros(model_dir, prepared, tmp_path):
    from llmasos.compress.common import RunSettings
    from llmasos.compress.prune_job import prune

    run = RunSettings(batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, precision="fp32", num_threads=1)
    r = prune(model_dir, "structured", prepared, tmp_path / "s", heads_keep_ratio=0.5, ffn_keep_ratio=0.25,
              recover_steps=15, run=run, calib_samples=8, eval_windows=8)
    assert r.params_after < r.params_before and r.num_kv_heads == (4, 2) and r.intermediate_size == (64, 16)
    assert r.ppl_recovered < r.ppl_pruned, r
    run = RunSettings(batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, precision="fp32", num_threads=1)
    r = prune(model_dir, "wanda", prepared, tmp_path / "w", sparsity=0.5, recover_steps=5, run=run,
              calib_samples=8, eval_windows=8)
    assert r.block_sparsity == pytest.approx(0.5, abs=1e-3)  # still exactly half after fine-tuning
    assert r.ppl_recovered < r.ppl_pruned


def test_bad_inputs_are_clear_value_errors_and_exit_code_2(model_dir, prepared, tmp_path):
    from typer.testing import CliRunner

    from llmasos.cli import app
    from llmasos.compress.prune_job import validate

    model, _, _ = load_fp32(model_dir)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        prune_unstructured(model, "magnitude", 1.0)
    with pytest.raises(ValueError, match="unknown pruning method 'random'"):
        validate("random", 0.5, None, None)
    with pytest.raises(ValueError, match="keeps 0 of 4 KV head groups"):
        keep_counts(model.config, 0.1, 1.0)
    runner = CliRunner()
    base = ["compress", "prune", "--model", str(model_dir), "--calib", str(prepared), "--out", str(tmp_path / "x")]
    for extra, msg in [(["--method", "random"], "unknown pruning method"), (["--sparsity", "-0.1"], "sparsity"),
                       (["--method", "structured", "--heads-keep-ratio", "0.05"], "keeps 0 of 4")]:
        r = runner.invoke(app, [*base, *extra, "--no-speed"])
        assert r.exit_code == 2 and msg in r.output, r.output
    r = runner.invoke(app, [*base, "--method", "structured", "--sparsity", "0.5", "--seq-len", "16",
                            "--calib-samples", "4", "--no-speed", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "KV heads / FFN size" in r.output and "4 / 64" in r.output and "2 / 32" in r.output


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gpt2"])
def test_structured_rebuild_matches_masking_across_families(family, tmp_path):
    """qkv biases (Qwen2), q/k norms (Qwen3), an ungated MLP with biases (GPT-2, FFN channels only)."""
    from transformers import AutoModelForCausalLM

    from llmasos.models.hf_format import save_hf_checkpoint
    from llmasos.models.random_checkpoint import build_random_checkpoint

    src = build_random_checkpoint(tmp_path / "src", family, with_tokenizer=False, seed=5)
    model, hf, _ = load_fp32(src)
    heads = 1.0 if family == "gpt2" else 0.5
    small, new_hf, plan = prune_structured(model, hf, calib(), heads, 0.5)
    ids = torch.randint(3, 300, (2, 9))
    save_hf_checkpoint(small, new_hf, tmp_path / "small")
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = mask_in_place(model, plan)(ids)
        assert (small(ids) - ref).abs().max() < 1e-5
        assert (hf_model(ids).logits - ref).abs().max() < 1e-4
    if family == "gpt2":
        with pytest.raises(ValueError, match="GPT-2"):
            keep_counts(model.config, 0.5, 1.0)

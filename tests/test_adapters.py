"""Adapters: LoRA, prompt tuning, prefix tuning - training, saving apart, merging, and serving per request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmasos.adapters.format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmasos.adapters.lora import (
    LoraConfig,
    add_lora,
    apply_lora,
    lora_modules,
    merge_adapter,
    save_lora,
    train_lora,
)
from llmasos.adapters.prefix_tuning import (
    PrefixTuningConfig,
    PrefixTuningModel,
    dense_forward,
    read_prefix_kv,
    save_prefix_tuning,
    train_prefix_tuning,
)
from llmasos.adapters.prompt_tuning import (
    PromptTuningConfig,
    PromptTuningModel,
    read_prompt_embeddings,
    save_prompt_tuning,
    train_prompt_tuning,
)
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.models.loader import load_model
from llmasos.models.random_checkpoint import build_random_checkpoint
from llmasos.train.config import TrainConfig

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
PROMPTS = [[5, 17, 99, 3, 250, 41, 7, 300, 12], [8, 8, 400, 19, 77, 5, 3, 61, 200, 9, 11, 90, 4], [100, 3, 7]]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("adapters") / "base", "llama", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_model(base_dir: Path) -> torch.nn.Module:
    return load_model(base_dir, dtype="float32")[0]


def random_lora(base_dir: Path, out: Path, seed: int, targets: list[str] | None = None) -> Path:
    """A LoRA with random non-zero B (a fresh one is the identity), saved apart from the base."""
    model = base_model(base_dir)
    cfg = LoraConfig(r=4, alpha=8, target_modules=targets or ["qkv_proj", "o_proj"])
    add_lora(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return save_lora(model, cfg, out, base_dir)


def greedy(forward, prompt: list[int], n: int = GREEDY.max_tokens) -> list[int]:  # noqa: ANN001
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(forward(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def tiny_train(out: Path, steps: int = 12, lr: float = 3e-2) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=4, seq_len=64, lr=lr, warmup_steps=0,
                       schedule="constant", precision="fp32", eval_interval=1000, eval_batches=1, ckpt_interval=1000,
                       log_interval=1, weight_decay=0.0, num_threads=1)


def first_last_loss(out: Path) -> tuple[float, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    return losses[0], losses[-1]


# -- LoRA ----------------------------------------------------------------------------------------------
def test_lora_wraps_freezes_and_starts_at_base(base_dir: Path) -> None:
    base, model = base_model(base_dir), base_model(base_dir)
    add_lora(model, LoraConfig(r=2, target_modules=["qkv_proj", "o_proj", "up_proj", "down_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(lora_modules(model)) == 4 * model.config.num_layers
    ids = torch.tensor([PROMPTS[0]])
    torch.testing.assert_close(model(ids), base(ids))  # B = 0: exactly the base


def test_lora_save_apart_and_merge_equals_base_plus_lora(base_dir: Path, tmp_path: Path) -> None:
    adir = random_lora(base_dir, tmp_path / "lora", seed=1, targets=["qkv_proj", "o_proj", "up_proj", "down_proj"])
    cfg = json.loads((adir / ADAPTER_CONFIG).read_text())
    assert cfg["adapter_type"] == "lora" and cfg["r"] == 4 and cfg["base_config_sha256"]
    assert (adir / ADAPTER_WEIGHTS).stat().st_size < (base_dir / "model.safetensors").stat().st_size
    wrapped = apply_lora(base_model(base_dir), adir)
    merged = load_model(merge_adapter(base_dir, adir, tmp_path / "merged"), dtype="float32")[0]
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        want, got, plain = wrapped(ids), merged(ids), base_model(base_dir)(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the adapter does change the model


def test_lora_training_lowers_loss_and_checkpoints_only_the_adapter(base_dir: Path, chat_file: Path,
                                                                    tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    train_lora(base_dir, chat_file, LoraConfig(r=4, alpha=8), tiny_train(out), progress=False)
    first, last = first_last_loss(out)
    assert last < first
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["params"] and all(k.endswith(("lora_A", "lora_B")) for k in ckpt["params"])
    assert (out / ADAPTER_CONFIG).is_file() and (out / ADAPTER_WEIGHTS).is_file()


# -- serving LoRA per request ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(base_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from llmasos import LLM

    root = tmp_path_factory.mktemp("served")
    adapters = {"a": random_lora(base_dir, root / "a", seed=1),
                "b": random_lora(base_dir, root / "b", seed=2, targets=["qkv_proj", "up_proj", "down_proj"])}
    llm = LLM(base_dir, dtype="float32", block_size=4, kv_cache_memory=2 << 20, max_num_batched_tokens=64)
    for name, path in adapters.items():
        assert llm.load_adapter(name, path) == "lora"
    merged = {name: load_model(merge_adapter(base_dir, path, root / f"merged-{name}"), dtype="float32")[0]
              for name, path in adapters.items()}
    merged[None] = base_model(base_dir)
    return llm, adapters, merged


def run_engine(llm, jobs: list[tuple[list[int], str | None]]) -> list:  # noqa: ANN001
    """Submit all jobs at once (one mixed batch) and run to completion."""
    eng = llm.engine
    rids = [eng.add_request(p, GREEDY, adapter=a) for p, a in jobs]
    done = {}
    while len(done) < len(rids):
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    return [done[r] for r in rids]


def test_engine_mixed_lora_batch_matches_merged_models(served) -> None:  # noqa: ANN001
    llm, _, merged = served
    jobs = [(PROMPTS[0], "a"), (PROMPTS[1], "b"), (PROMPTS[0], None), (PROMPTS[2], "a"), (PROMPTS[0], "b"),
            (PROMPTS[1], None)]
    outs = run_engine(llm, jobs)
    for (prompt, name), out in zip(jobs, outs, strict=True):
        assert out.outputs[0].token_ids == greedy(merged[name], prompt), (prompt, name)
    by = {name: out.outputs[0].token_ids for (p, name), out in zip(jobs, outs, strict=True) if p == PROMPTS[0]}
    assert len({tuple(v) for v in by.values()}) == 3  # three different models answered


def test_prefix_cache_is_never_shared_across_adapters(served) -> None:  # noqa: ANN001
    llm, _, merged = served
    prompt = [9, 8, 7, 6, 5, 4, 3, 2, 1, 33, 44, 55, 66]
    plain = llm.generate([prompt], GREEDY)[0]
    first_a = llm.generate([prompt], GREEDY, adapter="a")[0]
    again_a = llm.generate([prompt], GREEDY, adapter="a")[0]
    after_b = llm.generate([prompt], GREEDY, adapter="b")[0]
    assert first_a.metrics.num_cached_prompt_tokens == 0  # the base's blocks for the same tokens are not reused
    assert after_b.metrics.num_cached_prompt_tokens == 0
    assert again_a.metrics.num_cached_prompt_tokens > 0  # but one adapter's requests share their prefixes
    assert plain.outputs[0].token_ids == greedy(merged[None], prompt)
    assert first_a.outputs[0].token_ids == again_a.outputs[0].token_ids == greedy(merged["a"], prompt)
    assert after_b.outputs[0].token_ids == greedy(merged["b"], prompt)


def test_adapter_errors(served, base_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    llm, adapters, _ = served
    with pytest.raises(ValueError, match="unknown adapter"):
        llm.generate([PROMPTS[0]], GREEDY, adapter="nope")
    with pytest.raises(ValueError, match="already loaded"):
        llm.load_adapter("a", adapters["a"])
    with pytest.raises(ValueError, match="not an adapter directory"):
        llm.load_adapter("c", tmp_path)
    other = build_random_checkpoint(tmp_path / "other", "llama", preset="tiny", seed=3, with_tokenizer=False,
                                    intermediate_size=96)
    bad = random_lora(other, tmp_path / "other-lora", seed=0, targets=["up_proj"])
    with pytest.raises(ValueError, match="does not fit"), pytest.warns(UserWarning, match="another config"):
        llm.load_adapter("c", bad)
    assert "c" not in llm.engine.adapters


# -- prompt tuning and prefix tuning ---------------------------------------------------------------------
def test_prompt_tuning_trains_and_the_engine_serves_it(served, base_dir: Path, chat_file: Path,
                                                       tmp_path: Path) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    out = tmp_path / "prompt"
    train_prompt_tuning(base_dir, chat_file, PromptTuningConfig(num_virtual_tokens=5), tiny_train(out),
                        progress=False)
    first, last = first_last_loss(out)
    assert last < first
    llm, _, _ = served
    assert llm.load_adapter("p", out) == "prompt_tuning"
    dense = PromptTuningModel(base_model(base_dir), PromptTuningConfig(num_virtual_tokens=5))
    with torch.no_grad():
        dense.prompt.copy_(read_prompt_embeddings(out, dense.base))
    outs = run_engine(llm, [(PROMPTS[0], "p"), (PROMPTS[1], None), (PROMPTS[2], "p"), (PROMPTS[1], "p")])
    assert outs[0].prompt_token_ids == PROMPTS[0]  # the placeholders stay inside the kernel
    for (prompt, name), o in zip([(PROMPTS[0], "p"), (PROMPTS[2], "p"), (PROMPTS[1], "p")],
                                 [outs[0], outs[2], outs[3]], strict=True):
        assert o.outputs[0].token_ids == greedy(dense, prompt), (prompt, name)


def test_prefix_tuning_dense_and_engine_agree(served, base_dir: Path, chat_file: Path, tmp_path: Path) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    out = tmp_path / "prefix"
    cfg = PrefixTuningConfig(num_virtual_tokens=6, reparam_hidden=16)
    train_prefix_tuning(base_dir, chat_file, cfg, tiny_train(out, lr=1e-2), progress=False)
    first, last = first_last_loss(out)
    assert last < first
    base = base_model(base_dir)
    kv = read_prefix_kv(out, base)
    assert kv.shape == (base.config.num_layers, 2, 6, base.config.num_kv_heads, base.config.head_dim)
    llm, _, merged = served
    assert llm.load_adapter("x", out) == "prefix_tuning"
    jobs = [(PROMPTS[0], "x"), (PROMPTS[0], "a"), (PROMPTS[1], "x"), (PROMPTS[2], None), (PROMPTS[2], "x")]
    outs = run_engine(llm, jobs)
    for (prompt, name), o in zip(jobs, outs, strict=True):
        want = greedy(lambda ids: dense_forward(base, ids, kv), prompt) if name == "x" else greedy(merged[name], prompt)
        assert o.outputs[0].token_ids == want, (prompt, name)


def test_prefix_tuning_direct_kv_saves_what_it_trains(base_dir: Path, tmp_path: Path) -> None:
    model = PrefixTuningModel(base_model(base_dir), PrefixTuningConfig(num_virtual_tokens=3))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prefix_kv"]
    save_prefix_tuning(model, tmp_path / "d")
    torch.testing.assert_close(read_prefix_kv(tmp_path / "d", model.base), model.prefix_kv.detach())
    # Without a prefix, the hand-written layer loop must be exactly the base model.
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        torch.testing.assert_close(dense_forward(model.base, ids, None), model.base(ids), atol=1e-5, rtol=1e-5)


def test_prompt_tuning_save_roundtrip(base_dir: Path, tmp_path: Path) -> None:
    model = PromptTuningModel(base_model(base_dir), PromptTuningConfig(num_virtual_tokens=2))
    save_prompt_tuning(model, tmp_path / "p", base_dir)
    torch.testing.assert_close(read_prompt_embeddings(tmp_path / "p", model.base), model.prompt.detach())
    with pytest.raises(ValueError, match="not a prefix tuning adapter"):
        read_prefix_kv(tmp_path / "p", model.base)


# -- command line --------------------------------------------------------------------------------------
def test_cli_train_merge_and_generate_with_adapter(base_dir: Path, chat_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmasos.cli import app

    run = CliRunner().invoke
    common = ["--model", str(base_dir), "--data", str(chat_file), "--steps", "2", "--batch-size", "2",
              "--seq-len", "32", "--threads", "1"]
    res = run(app, ["adapt", "lora", *common, "--out", str(tmp_path / "lora"), "--rank", "2", "--mlp"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "lora" / ADAPTER_CONFIG).read_text())["target_modules"] == [
        "qkv_proj", "o_proj", "up_proj", "down_proj"]
    res = run(app, ["adapt", "prompt", *common, "--out", str(tmp_path / "prompt"), "--num-virtual-tokens", "3"])
    assert res.exit_code == 0, res.output
    res = run(app, ["adapt", "prefix", *common, "--out", str(tmp_path / "prefix"), "--num-virtual-tokens", "3"])
    assert res.exit_code == 0, res.output
    res = run(app, ["adapt", "merge", "--model", str(base_dir), "--adapter", str(tmp_path / "lora"),
                    "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "merged" / "config.json").is_file()
    for adir in ("lora", "prompt", "prefix"):
        res = run(app, ["generate", "hello", "--model", str(base_dir), "--dtype", "float32", "--threads", "1",
                        "--max-tokens", "3", "--temperature", "0", "--json", "--adapter", str(tmp_path / adir)])
        assert res.exit_code == 0, res.output
    res = run(app, ["adapt", "merge", "--model", str(base_dir), "--adapter", str(tmp_path / "prompt"),
                    "--out", str(tmp_path / "m2")])
    assert res.exit_code == 2 and "not LoRA" in res.output


def test_one_batch_mixes_every_kind(served, base_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    llm, _, merged = served
    base = base_model(base_dir)
    pt = PromptTuningModel(base, PromptTuningConfig(num_virtual_tokens=3), seed=5)
    px = PrefixTuningModel(base, PrefixTuningConfig(num_virtual_tokens=5), seed=6)
    with torch.no_grad():
        px.prefix_kv.mul_(3.0)  # move it off the base's own K/V so the test can tell
    llm.load_adapter("mix-p", save_prompt_tuning(pt, tmp_path / "p"))
    llm.load_adapter("mix-x", save_prefix_tuning(px, tmp_path / "x"))
    refs = {"mix-p": pt, "mix-x": px, "a": merged["a"], "b": merged["b"], None: merged[None]}
    jobs = [(PROMPTS[i % 3], name) for i, name in enumerate(["mix-x", "a", None, "mix-p", "b", "mix-p", "mix-x"])]
    outs = run_engine(llm, jobs)
    for (prompt, name), o in zip(jobs, outs, strict=True):
        assert o.outputs[0].token_ids == greedy(refs[name], prompt), (prompt, name)

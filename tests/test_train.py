"""The training toolchain on tiny models: data, tokenizer, the loop's guarantees, export, SFT, DDP, the recipe."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmasos.train.config import TrainConfig
from llmasos.train.data import DataError, TokenDataset, prepare_dataset, read_texts
from llmasos.train.pretrain import PretrainSpec, pretrain
from llmasos.train.schedule import lr_at
from llmasos.train.tokenizer import train_tokenizer

TINY_MODEL = dict(family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny400(make_tiny_corpus) -> tuple[Path, Path, Path]:
    return make_tiny_corpus(400)


@pytest.fixture(scope="module")
def corpus(tiny400) -> Path:
    return tiny400[0]


@pytest.fixture(scope="module")
def prepared(tiny400) -> tuple[Path, Path]:
    return tiny400[1], tiny400[2]


def spec(data: Path, out: Path, **train) -> PretrainSpec:
    base = dict(out_dir=str(out), max_steps=30, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=3, eval_interval=10,
                eval_batches=4, ckpt_interval=10, log_interval=5, precision="fp32")
    return PretrainSpec(model=TINY_MODEL, data=str(data), train=TrainConfig(**{**base, **train}))


def test_lr_schedules_warm_up_then_decay():
    cos = TrainConfig(out_dir="x", max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(55, cos) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cos) == pytest.approx(0.1)
    wsd = TrainConfig(out_dir="x", max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd",
                      decay_fraction=0.2)
    assert [lr_at(s, wsd) for s in (20, 79, 80)] == [1.0, 1.0, 1.0]
    assert lr_at(90, wsd) == pytest.approx(0.5) and lr_at(100, wsd) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(out_dir="x", max_steps=5, warmup_steps=5)


def test_weight_decay_only_on_matrices():
    from llmasos.train.pretrain import build_model_from_spec
    from llmasos.train.trainer import build_optimizer

    model, _ = build_model_from_spec(TINY_MODEL, 300, 2)
    opt = build_optimizer(list(model.named_parameters()), TrainConfig(out_dir="x", max_steps=10, warmup_steps=1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_prepare_splits_by_document_and_separates_with_eos(prepared):
    tok_dir, data = prepared
    meta = json.loads((data / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["eos_token_id"] == 2
    assert meta["train_docs"] + meta["val_docs"] == 400 and 10 <= meta["val_docs"] <= 80
    train = TokenDataset(data, "train")
    assert len(train) == meta["train_tokens"] and int((train.tokens == 2).sum()) == meta["train_docs"]
    batch = train.sample(3, 16, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (3, 16) and torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_bad_data_gets_clear_errors(tmp_path, prepared):
    tok_dir, _ = prepared
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_texts(bad))
    bad.write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing string field 'text'"):
        list(read_texts(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty"):
        prepare_dataset(read_texts(empty), tok, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.bin*"))  # nothing half-written left behind
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match="not UTF-8"):
        list(read_texts(tmp_path / "latin.txt"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="latin.jsonl:2: not UTF-8"):
        list(read_texts(tmp_path / "latin.jsonl"))
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([], 300)
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(["x"], 100)


def test_tokenizer_has_chat_specials_and_template(prepared):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(prepared[0]))
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("héllo wörld ✓")["input_ids"]) == "héllo wörld ✓"  # byte-level: nothing is unknown


def test_pretrain_learns_logs_and_exports_a_transformers_checkpoint(prepared, tmp_path):
    _, data = prepared
    result = pretrain(spec(data, tmp_path / "run"), progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.steps == 30 and losses[-1] < losses[0] - 1.0
    assert all(r["grad_norm"] > 0 for r in records if "loss" in r)
    assert result.val_ppl == pytest.approx(math.exp(result.val_loss))
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000

    from transformers import AutoModelForCausalLM

    from llmasos.models.loader import load_model

    ours, _ = load_model(tmp_path / "run" / "model", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "model"), dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-4


def test_resume_is_exact_and_never_overwrites(prepared, tmp_path):
    _, data = prepared
    pretrain(spec(data, tmp_path / "straight"), progress=False)
    pretrain(spec(data, tmp_path / "resumed"), progress=False, stop_at_step=10)  # "killed" after step 10's checkpoint
    with pytest.raises(FileExistsError, match="resume"):
        pretrain(spec(data, tmp_path / "resumed"), progress=False)
    pretrain(spec(data, tmp_path / "resumed"), progress=False, resume=True)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines logged after the checkpoint were dropped, not duplicated


def test_non_finite_steps_are_skipped_then_divergence_stops_the_run(prepared, tmp_path, caplog):
    from llmasos.train.pretrain import LMBatches, build_model_from_spec
    from llmasos.train.trainer import Trainer, TrainingDiverged, causal_lm_loss

    _, data = prepared
    calls = {"n": 0}

    def sometimes_nan(model, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        loss = causal_lm_loss(model, batch)
        return loss * float("nan") if calls["n"] in (3, 4) else loss

    model, _ = build_model_from_spec(TINY_MODEL, 300, 2)
    cfg = spec(data, tmp_path / "nan", max_steps=8).train
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, cfg, LMBatches(data, 4, 32), sometimes_nan, progress=False)
    with caplog.at_level("WARNING", logger="llmasos.train"):
        result = trainer.fit()
    assert result.skipped_steps == 2 and "step 2 skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

    model2, _ = build_model_from_spec(TINY_MODEL, 300, 2)
    cfg2 = spec(data, tmp_path / "nan2", max_steps=8, max_skipped_steps=3).train
    always = Trainer(model2, cfg2, LMBatches(data, 4, 32), lambda m, b: causal_lm_loss(m, b) * float("inf"),
                     progress=False)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        always.fit()


def test_configs_that_do_not_fit_are_refused_before_allocating(prepared, tmp_path):
    _, data = prepared
    huge = PretrainSpec(model=dict(TINY_MODEL, hidden_size=16384, intermediate_size=65536, num_hidden_layers=64,
                                   num_attention_heads=128, num_key_value_heads=128), data=str(data),
                        train=TrainConfig(out_dir=str(tmp_path / "huge"), max_steps=10, warmup_steps=1))
    with pytest.raises(MemoryError, match="GiB"):
        pretrain(huge, progress=False)


def test_sft_puts_loss_only_on_assistant_turns_and_learns_the_answers(tmp_path):
    from transformers import AutoTokenizer

    from llmasos import LLM, SamplingParams
    from llmasos.models.random_checkpoint import build_random_checkpoint
    from llmasos.train.sft import sft, tokenize_conversation

    base = build_random_checkpoint(tmp_path / "base", "llama", preset="tiny", seed=3)
    tok = AutoTokenizer.from_pretrained(str(base))
    convs = [[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "a tiny model"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
              {"role": "assistant", "content": "Paris"}]]
    ex = tokenize_conversation(tok, convs[1], 128)
    assert tok.decode([t for t in ex.labels if t != -100]) == "Paris<|im_end|>\n"
    result = sft(base, convs * 8, TrainConfig(out_dir=str(tmp_path / "sft"), max_steps=60, batch_size=4, lr=1e-2,
                                              warmup_steps=5, precision="fp32", eval_interval=30), progress=False)
    assert result.val_loss < 0.5
    llm = LLM(str(tmp_path / "sft" / "model"), dtype="float32")
    outs = llm.chat([c[:-1] for c in convs], SamplingParams(max_tokens=10, temperature=0))
    assert [o.text for o in outs] == ["a tiny model", "Paris"]


def test_ddp_two_processes_agree(prepared, tmp_path):
    _, data = prepared
    s = spec(data, tmp_path / "ddp", max_steps=6, eval_interval=3, num_threads=1)
    (tmp_path / "spec.json").write_text(s.model_dump_json())
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from llmasos.train.pretrain import PretrainSpec, pretrain, LMBatches, build_model_from_spec\n"
        "from llmasos.train.trainer import Trainer\n"
        "spec = PretrainSpec.model_validate_json(open(sys.argv[1]).read())\n"
        "model, _ = build_model_from_spec(spec.model, 300, 2, seed=0)\n"
        "t = Trainer(model, spec.train, LMBatches(spec.data, 4, 32), progress=False)\n"
        "r = t.fit()\n"
        "flat = torch.cat([p.detach().flatten() for p in model.parameters()])\n"
        "gathered = [torch.zeros_like(flat) for _ in range(t.ctx.world_size)]\n"
        "dist.all_gather(gathered, flat)\n"
        # Each rank reports in a file of its own: two processes printing to one pipe can run their lines together.
        "open(f'{sys.argv[2]}/rank{t.ctx.rank}.txt', 'w').write("
        "f'RANK {t.ctx.rank} WORLD {t.ctx.world_size} EQUAL {all(torch.equal(gathered[0], g) for g in gathered)}'"
        " f' LOSS {r.final_loss:.4f} VAL {r.val_loss:.4f}')\n"
        "dist.barrier()\n"  # no rank tears the group down while the other still uses it
        "dist.destroy_process_group()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", str(script), str(tmp_path / "spec.json"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert len(lines) == 2 and all("WORLD 2 EQUAL True" in line for line in lines)
    assert lines[0].split("LOSS")[1] == lines[1].split("LOSS")[1]  # the logged loss is the all-reduced mean
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmasos.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_tokenizer_prepare_pretrain(corpus, tmp_path):
    r = run_cli("train", "tokenizer", "-i", str(corpus), "--vocab-size", "300", "-o", str(tmp_path / "tok"))
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "prepare", "-t", str(tmp_path / "tok"), "-i", str(corpus), "-o", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train_docs"] > 300
    cfg = spec(tmp_path / "data", tmp_path / "run", max_steps=6, eval_interval=3).model_dump()
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = run_cli("train", "pretrain", "-c", str(tmp_path / "cfg.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 6 and (tmp_path / "run" / "model" / "tokenizer.json").is_file()

    (tmp_path / "bad.jsonl").write_text("not json\n")
    r = run_cli("train", "prepare", "-t", str(tmp_path / "tok"), "-i", str(tmp_path / "bad.jsonl"), "-o",
                str(tmp_path / "d2"))
    assert r.returncode == 2 and "bad.jsonl:1: not valid JSON" in r.stderr and "Traceback" not in r.stderr
    cfg["train"]["lr"] = -1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = run_cli("train", "pretrain", "-c", str(tmp_path / "cfg.json"))
    assert r.returncode == 2 and "lr" in r.stderr


def write_wordnet(d: Path, n: int = 80) -> Path:
    """A WordNet-format dict directory: the parser and the recipe run on it as on the real data."""
    d.mkdir(parents=True)
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University"]
    for i in range(n):
        hyper = f" @ {1000:08d} n 0000" if i else ""
        lines.append(f"{1000 + i:08d} 05 n 02 thing_{i} 0 item{i}(a) 0 00{1 if i else 0}{hyper} | "
                     f"a made-up object number {i}; \"the thing {i} was here\"  ")
    (d / "data.noun").write_text("\n".join(lines) + "\n")
    for part in ["verb", "adj", "adv"]:
        (d / f"data.{part}").write_text(lines[0] + "\n")
    return d


def test_wordnet_reader(tmp_path):
    from llmasos.train.recipes.sources import find_wordnet, read_wordnet

    synsets = read_wordnet(find_wordnet(write_wordnet(tmp_path / "wn", 3)))
    assert [(s.words, s.definition, s.examples, s.hypernym) for s in synsets][1] == (
        ["thing 1", "item1"], "a made-up object number 1", ["the thing 1 was here"], "thing 0")
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        find_wordnet(tmp_path / "nowhere")


def test_builtin_recipe_end_to_end_at_smoke_size(tmp_path):
    from llmasos.train.recipes.builtin import BuiltinRecipe, run_builtin

    final = run_builtin(tmp_path / "work", BuiltinRecipe.smoke(), str(write_wordnet(tmp_path / "wn")),
                        progress=False)
    card = (final / "README.md").read_text()
    stats = json.loads((final / "build_stats.json").read_text())
    assert "## Sample outputs" in card and stats["parameters"] > 0 and stats["val_ppl_pretrain_data"] > 1
    assert json.loads((final / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # Stages are resumable: a second run reuses every finished stage.
    assert all((tmp_path / "work" / s / ".done").is_file()
               for s in ["corpus", "tokenizer", "data", "pretrain", "sft", "teacher", "distill"])
    # Distillation: both candidates measured on the same held-out sets, the better one shipped, figures in the card.
    assert set(stats["candidates"]) == {"chat fine-tuned", "distilled"}
    assert stats["shipped"] in stats["candidates"] and "## Distillation" in card
    assert all("teacher_rouge_l" in c and "task_exact_match" in c for c in stats["candidates"].values())

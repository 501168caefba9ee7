"""Knowledge distillation on tiny fp32 models: the loss against hand formulas, student init, a short run, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmasos.compress.distill import (
    KDConfig,
    capture_layer_outputs,
    hidden_cosine_loss,
    hidden_targets,
    init_student,
    kd_eval_loss,
    kd_loss,
    layer_map,
)

TEACHER = dict(family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def prepared(make_tiny_corpus) -> Path:
    return make_tiny_corpus(300)[2]


@pytest.fixture(scope="module")
def teacher_dir(prepared, pretrain_tiny) -> Path:
    """A 4-layer Llama trained briefly on the corpus (so distilling it means something)."""
    return pretrain_tiny(TEACHER, prepared)


def _hand_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temp: float) -> float:
    """KL(p_T || q_T) for one position, in float64 with explicit sums."""
    p = torch.softmax(p_logits.double() / temp, -1)
    q = torch.softmax(q_logits.double() / temp, -1)
    return float(sum(p[i] * math.log(p[i] / q[i]) for i in range(len(p))))


def test_kd_loss_equals_the_hand_formula_and_reverse_kl_swaps_the_arguments():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g) * 2
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, 1] = labels[1, 4] = -100
    valid = [(b, i) for b in range(2) for i in range(5) if labels[b, i] != -100]
    temp, alpha = 2.5, 0.3
    ce = sum(-math.log(float(torch.softmax(s[b, i].double(), -1)[labels[b, i]])) for b, i in valid) / len(valid)
    fwd = temp**2 * sum(_hand_kl(t[b, i], s[b, i], temp) for b, i in valid) / len(valid)
    rev = temp**2 * sum(_hand_kl(s[b, i], t[b, i], temp) for b, i in valid) / len(valid)
    assert abs(fwd - rev) > 1e-3  # the two directions genuinely differ here

    loss, parts = kd_loss(s, t, labels, KDConfig(temperature=temp, alpha=alpha))
    assert parts["kl"] == pytest.approx(fwd, rel=1e-5) and parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(alpha * fwd + (1 - alpha) * ce, rel=1e-5)
    loss_r, parts_r = kd_loss(s, t, labels, KDConfig(temperature=temp, alpha=alpha, reverse_kl=True))
    assert parts_r["kl"] == pytest.approx(rev, rel=1e-5)
    assert float(loss_r) == pytest.approx(alpha * rev + (1 - alpha) * ce, rel=1e-5)
    # alpha 1: pure soft targets; identical logits: zero KL
    assert float(kd_loss(s, s.clone(), labels, KDConfig(alpha=1.0))[0]) == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    a, b = [torch.randn(2, 3, 8, generator=g) for _ in range(2)], [torch.randn(2, 3, 8, generator=g) for _ in range(2)]
    labels = torch.tensor([[1, -100, 2], [3, 4, -100]])
    m = labels != -100
    ref = sum(float((1 - F.cosine_similarity(x[m], y[m], dim=-1)).mean()) for x, y in zip(a, b, strict=True)) / 2
    assert float(hidden_cosine_loss(a, b, labels)) == pytest.approx(ref, rel=1e-6)
    s, t = torch.randn(1, 3, 11, generator=g), torch.randn(1, 3, 11, generator=g)
    same = [x[:1] for x in a]
    _, parts = kd_loss(s, t, labels[:1], KDConfig(hidden_weight=0.5), same, same)
    assert parts["hidden"] == pytest.approx(0.0, abs=1e-6)


def test_layer_maps_and_bad_configs():
    assert layer_map(4) == [0, 2] and layer_map(6, keep_every=3) == [0, 3]
    assert layer_map(6, num_layers=3) == [0, 2, 4] and layer_map(4, num_layers=4) == [0, 1, 2, 3]
    assert hidden_targets([0, 2], 4) == [1, 3] and hidden_targets([0, 2, 4], 6) == [1, 3, 5]
    with pytest.raises(ValueError, match="between 1 and 4"):
        layer_map(4, num_layers=5)
    with pytest.raises(ValueError, match="not both"):
        layer_map(4, num_layers=2, keep_every=2)
    with pytest.raises(ValueError, match="temperature"):
        KDConfig(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        KDConfig(alpha=1.5)


def test_student_init_copies_the_mapped_teacher_layers_exactly(teacher_dir):
    from llmasos.compress.common import load_fp32

    teacher, hf, _ = load_fp32(teacher_dir)
    student, s_hf = init_student(teacher, hf, [0, 3])
    assert s_hf["num_hidden_layers"] == 2 and student.config.num_layers == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        src = key
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            src = f"layers.{[0, 3][int(i)]}.{rest}"
        assert torch.equal(value, t_state[src]), key
    assert student.lm_head.weight is student.embed_tokens.weight  # tying survives
    # hooks see each layer's output: the last one, normed and projected, is the model's logits
    ids = torch.randint(3, 300, (2, 9))
    with capture_layer_outputs(student, [1, 0]) as hid:
        logits = student(ids)
    assert len(hid) == 2 and torch.allclose(student.lm_head(student.norm(hid[0])), logits, atol=1e-6)


def test_short_distillation_lowers_the_kd_loss_and_exports_a_servable_student(teacher_dir, prepared, tmp_path):
    from llmasos import LLM, SamplingParams
    from llmasos.compress.common import RunSettings, load_fp32
    from llmasos.compress.distill import distill
    from llmasos.train.data import TokenDataset

    kd = KDConfig(temperature=2.0, alpha=0.7, hidden_weight=0.1)
    run = RunSettings(steps=15, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, precision="fp32", num_threads=1)
    report = distill(teacher_dir, prepared, tmp_path / "student", kd, run, keep_every=2, eval_windows=8)
    assert report.layer_map == [0, 2] and report.steps == 15
    assert report.student_params < report.teacher_params

    teacher, hf, _ = load_fp32(teacher_dir)
    init, _ = init_student(teacher, hf, [0, 2])
    trained, _, _ = load_fp32(tmp_path / "student")
    val = TokenDataset(prepared, "val")
    batches = list(val.sequential(4, 32, max_batches=3))
    before = kd_eval_loss(init, teacher, batches, kd, [0, 2])
    after = kd_eval_loss(trained, teacher, batches, kd, [0, 2])
    assert after < before * 0.9, (before, after)

    llm = LLM(str(tmp_path / "student"), dtype="float32", kv_cache_memory=4 << 20)
    out = llm.generate(["the cat"], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert len(out[0].token_ids) == 5
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student"), dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        assert (hf_model(ids).logits - trained(ids)).abs().max() < 1e-4


def test_cli_distill_errors_exit_2_and_a_tiny_run_prints_the_table(teacher_dir, prepared, tmp_path):
    from typer.testing import CliRunner

    from llmasos.cli import app

    runner = CliRunner()
    base = ["compress", "distill", "--teacher", str(teacher_dir), "--data", str(prepared)]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--temperature", "0"])
    assert r.exit_code == 2 and "temperature must be > 0" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--layers", "9"])
    assert r.exit_code == 2 and "between 1 and 4" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "s"), "--layers", "2", "--steps", "3", "--batch-size",
                            "2", "--seq-len", "16", "--precision", "fp32", "--no-speed", "--reverse-kl",
                            "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "val perplexity" in r.output and "params" in r.output and (tmp_path / "s" / "config.json").is_file()


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_student_init_exports_for_other_families(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmasos.compress.common import load_fp32
    from llmasos.models.hf_format import save_hf_checkpoint
    from llmasos.models.random_checkpoint import build_random_checkpoint

    teacher, hf, _ = load_fp32(build_random_checkpoint(tmp_path / "t", family, with_tokenizer=False, seed=2))
    student, s_hf = init_student(teacher, hf, layer_map(2, num_layers=1))
    save_hf_checkpoint(student, s_hf, tmp_path / "s")
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "s"), dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (1, 7))
    with torch.no_grad():
        assert ref.config.num_hidden_layers == 1 and (ref(ids).logits - student(ids)).abs().max() < 1e-4

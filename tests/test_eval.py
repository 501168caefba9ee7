"""`llmasos.eval`: perplexity against transformers, BLEU/ROUGE against sacrebleu/rouge-score, `plan` counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import typer
from typer.testing import CliRunner

from llmasos.cli import app
from llmasos.eval.bleu import bleu
from llmasos.eval.cli import plan
from llmasos.eval.perplexity import perplexity, text_perplexity, windows
from llmasos.eval.rouge import rouge_l
from llmasos.models import load_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how can I help you today? Thanks for asking.",
    "LLMasOS treats the language model as the CPU of an operating system.",
    "yes",
    "JSON schema regex choice yes no true false null 0123456789",
]
LONG = " ".join(TEXTS) * 3  # several windows at max_length 16


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_dir))


@pytest.fixture(scope="module")
def ours(llama_dir):
    return load_model(llama_dir, dtype="float32")[0]


@pytest.fixture(scope="module")
def hf(llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()


def hf_text_nll(hf, ids: list[int]) -> float:
    with torch.no_grad():
        loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    return float(loss) * (len(ids) - 1)


def hf_sliding_window(hf, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The loop of HF's "Perplexity of fixed-length models" guide; returns (total NLL, scored tokens)."""
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss
        # Labels are shifted inside the model: count the ones actually scored (the guide's
        # `num_valid_tokens - batch_size` is one short for every window after the first).
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


# ---------------------------------------------------------------- perplexity


def test_perplexity_matches_transformers(ours, hf, tokenizer):
    token_lists = tokenizer(TEXTS)["input_ids"]
    nlls = [hf_text_nll(hf, ids) for ids in token_lists]
    counts = [len(ids) - 1 for ids in token_lists]
    scored = [i for i, c in enumerate(counts) if c]
    ref_corpus = math.exp(sum(nlls) / sum(counts))
    ref_mean = sum(math.exp(nlls[i] / counts[i]) for i in scored) / len(scored)
    for batch_size in (1, 2, 8):  # padding and batching must not change the result
        res = text_perplexity(ours, tokenizer, TEXTS, batch_size=batch_size)
        assert rel(res.corpus_ppl, ref_corpus) < 1e-5 and rel(res.mean_ppl, ref_mean) < 1e-5
        assert rel(res.nll, sum(nlls)) < 1e-5
        assert res.num_tokens == sum(counts) and res.num_texts == len(scored)
        assert res.num_skipped == len(TEXTS) - len(scored)


@pytest.mark.parametrize("max_length,stride", [(16, 5), (16, 8), (12, 11)])
def test_sliding_window_matches_the_hf_guide(ours, hf, tokenizer, max_length, stride):
    ids = tokenizer(LONG)["input_ids"]
    assert len(ids) > 3 * max_length
    ref_nll, ref_n = hf_sliding_window(hf, ids, max_length, stride)
    res = perplexity(ours, [ids], max_length=max_length, stride=stride)
    assert res.num_tokens == ref_n == len(ids) - 1
    assert rel(res.nll, ref_nll) < 1e-5
    assert rel(res.corpus_ppl, math.exp(ref_nll / ref_n)) < 1e-5
    # Mixed with short texts in one batch: each text still gets its own result.
    short = tokenizer(TEXTS[:2])["input_ids"]
    mixed = perplexity(ours, [*short, ids], max_length=max_length, stride=stride, batch_size=3)
    alone = [perplexity(ours, [s], max_length=max_length, stride=stride) for s in short]
    assert rel(mixed.nll, res.nll + sum(a.nll for a in alone)) < 1e-5
    assert rel(mixed.mean_ppl, (res.mean_ppl + sum(a.mean_ppl for a in alone)) / 3) < 1e-5


def test_window_schedule_scores_each_token_once():
    for n in range(0, 40):
        for m in range(1, 9):
            for s in range(1, m + 1):
                ws = windows(n, m, s)
                assert [t for _, _, lo, hi in ws for t in range(lo, hi)] == list(range(1, n))
                assert all(e - b <= m and lo > b and hi <= e + 1 for b, e, lo, hi in ws)
    # Disjoint windows: the previous window's last position predicts the next window's first token.
    assert windows(20, 8, 8) == [(0, 8, 1, 9), (8, 16, 9, 17), (16, 20, 17, 20)]


def test_long_context_equals_full_text_and_bf16_is_close(ours, hf, tokenizer, llama_dir):
    ids = tokenizer(LONG)["input_ids"]
    full = perplexity(ours, [ids], max_length=len(ids) + 5)
    assert rel(full.nll, hf_text_nll(hf, ids)) < 1e-5
    bf16 = perplexity(load_model(llama_dir, dtype="bfloat16")[0], [ids], max_length=len(ids))
    assert rel(bf16.corpus_ppl, full.corpus_ppl) < 0.02


def test_perplexity_validates_input(ours):
    with pytest.raises(ValueError, match="no texts"):
        perplexity(ours, [])
    with pytest.raises(ValueError, match="2 or more tokens"):
        perplexity(ours, [[], [5]])
    with pytest.raises(ValueError, match="stride"):
        perplexity(ours, [[1, 2, 3]], max_length=4, stride=5)
    with pytest.raises(ValueError, match="context"):
        perplexity(ours, [[1, 2, 3]], max_length=ours.config.max_position + 1)
    with pytest.raises(ValueError, match="token ids"):
        perplexity(ours, [[1, ours.config.vocab_size]])
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(ours, [[1, 2]], batch_size=0)


def test_gpt2_learned_positions(checkpoints):
    from transformers import AutoModelForCausalLM

    ids = list(range(3, 70))
    ours = load_model(checkpoints["gpt2"], dtype="float32")[0]
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoints["gpt2"]), dtype=torch.float32).eval()
    ref_nll, ref_n = hf_sliding_window(hf, ids, 24, 10)
    res = perplexity(ours, [ids], max_length=24, stride=10)
    assert res.num_tokens == ref_n and rel(res.nll, ref_nll) < 1e-5


# ---------------------------------------------------------------- CLI helpers


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def invoke_plan(*args: str):
    # `plan` is registered top-level by llmasos.cli; a one-command app runs it the same way.
    plan_app = typer.Typer()
    plan_app.command()(plan)
    return CliRunner().invoke(plan_app, list(args))


def assert_clean_failure(r, *fragments: str) -> None:
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    for f in fragments:
        assert f in r.stderr


def test_ppl_cli_json_txt_and_jsonl(llama_dir, ours, tokenizer, tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS[:3]) + "\n\n")
    r = invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(txt), "--json", "--max-length", "16",
               "--stride", "8")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    expect = text_perplexity(ours, tokenizer, TEXTS[:3], max_length=16, stride=8)
    assert data["num_texts"] == 3 and data["num_tokens"] == expect.num_tokens
    for k in ("corpus_ppl", "mean_ppl", "nll"):
        assert rel(data[k], getattr(expect, k)) < 1e-6

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS[:3])) + "\n")
    r2 = invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(jsonl), "--json", "--max-length", "16",
                "--stride", "8")
    assert r2.exit_code == 0, r2.stderr
    assert json.loads(r2.stdout) == data

    whole = invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(txt), "--whole-file", "--json")
    assert whole.exit_code == 0 and json.loads(whole.stdout)["num_texts"] == 1

    table = invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(txt))
    assert table.exit_code == 0 and "corpus ppl" in table.stdout


def test_ppl_cli_errors(llama_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    assert_clean_failure(invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(bad)), "bad.jsonl:2")
    bad.write_text('{"text": "ok"}\n\n{"txt": "no"}\n')
    assert_clean_failure(invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(bad)), "bad.jsonl:3", "text")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_clean_failure(invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(empty)), "empty")
    assert_clean_failure(invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(tmp_path / "nope.txt")),
                         "no such file")
    ok = tmp_path / "ok.txt"
    ok.write_text("hello there\n")
    assert_clean_failure(invoke("eval", "ppl", "--model", str(llama_dir), "--data", str(ok), "--max-length", "4",
                                "--stride", "9"), "stride")
    assert_clean_failure(invoke("eval", "ppl", "--model", str(tmp_path / "no-model"), "--data", str(ok)))


# ---------------------------------------------------------------- BLEU

HYPS = ["The cat sat on the mat.", "今天天气很好。", "It is a guide to action which ensures that the military always obeys."]
REFS1 = ["The cat is on the mat.", "今天的天气非常好。", "It is a guide to action that ensures that the military will forever heed."]
REFS2 = ["There is a cat on the mat.", "天气很好。", "It is the guiding principle which guarantees the military forces always obey."]


@pytest.mark.parametrize("tokenize", ["13a", "zh", "char", "intl", "none"])
@pytest.mark.parametrize("lowercase", [False, True])
def test_bleu_equals_sacrebleu(tokenize, lowercase):
    import sacrebleu

    for refs in ([REFS1], [REFS1, REFS2]):
        expect = sacrebleu.corpus_bleu(HYPS, refs, tokenize=tokenize, lowercase=lowercase)
        got = bleu(HYPS, refs, tokenize=tokenize, lowercase=lowercase)
        assert got["bleu"] == expect.score and got["precisions"] == expect.precisions and got["bp"] == expect.bp
        assert f"tok:{tokenize}" in got["signature"] and f"nrefs:{len(refs)}" in got["signature"]


def test_bleu_chinese_needs_a_chinese_tokenizer():
    zh = bleu(HYPS[1:2], [REFS1[1:2]], tokenize="zh")["bleu"]
    assert zh > 0 and bleu(HYPS[1:2], [REFS1[1:2]], tokenize="13a")["bleu"] == 0.0  # one "word" per sentence


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bleu_cli(tmp_path):
    import sacrebleu

    h, r1, r2 = (write_lines(tmp_path / n, x) for n, x in [("h", HYPS), ("r1", REFS1), ("r2", REFS2)])
    r = invoke("eval", "bleu", "--hyp", h, "--ref", r1, "--ref", r2, "--tokenize", "zh", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS1, REFS2], tokenize="zh").score
    assert "BLEU" in invoke("eval", "bleu", "--hyp", h, "--ref", r1).stdout

    short = write_lines(tmp_path / "short", REFS1[:2])
    assert_clean_failure(invoke("eval", "bleu", "--hyp", h, "--ref", r1, "--ref", short), "short", "2 lines", "3")
    (tmp_path / "empty").write_text("")
    assert_clean_failure(invoke("eval", "bleu", "--hyp", str(tmp_path / "empty"), "--ref", r1), "empty")
    assert_clean_failure(invoke("eval", "bleu", "--hyp", h, "--ref", str(tmp_path / "missing")), "no such file")
    assert_clean_failure(invoke("eval", "bleu", "--hyp", h, "--ref", r1, "--tokenize", "spm"), "spm")


# ---------------------------------------------------------------- ROUGE-L


@pytest.mark.parametrize("stemmer", [False, True])
def test_rouge_equals_rouge_score(stemmer):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    single = [scorer.score(t, p)["rougeL"] for t, p in zip(REFS1, HYPS, strict=True)]
    multi = [scorer.score_multi([a, b], p)["rougeL"] for a, b, p in zip(REFS1, REFS2, HYPS, strict=True)]
    for refs, scores in (([REFS1], single), ([REFS1, REFS2], multi)):
        got = rouge_l(HYPS, refs, stemmer=stemmer)["rougeL"]
        for k in ("precision", "recall", "fmeasure"):
            assert got[k] == pytest.approx(sum(getattr(s, k) for s in scores) / len(scores), rel=1e-12)


def test_rouge_chinese_with_char_tokenizer():
    assert rouge_l(["今天天气很好"], [["今天的天气非常好"]])["rougeL"]["fmeasure"] == 0.0  # default drops CJK
    got = rouge_l(["今天 天气很好"], [["今天的天气非常好"]], tokenize="char")["rougeL"]
    # LCS(今天天气很好, 今天的天气非常好) = 今天天气好: 5 of 6 hypothesis and 8 reference characters.
    p, r = 5 / 6, 5 / 8
    assert got == pytest.approx({"precision": p, "recall": r, "fmeasure": 2 * p * r / (p + r)}, rel=1e-12)
    with pytest.raises(ValueError, match="stemmer"):
        rouge_l(["a"], [["a"]], tokenize="char", stemmer=True)


def test_rouge_cli(tmp_path):
    h, r1, r2 = (write_lines(tmp_path / n, x) for n, x in [("h", HYPS), ("r1", REFS1), ("r2", REFS2)])
    r = invoke("eval", "rouge", "--hyp", h, "--ref", r1, "--ref", r2, "--tokenize", "char", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == rouge_l(HYPS, [REFS1, REFS2], tokenize="char")
    assert "F1" in invoke("eval", "rouge", "--hyp", h, "--ref", r1, "--stemmer").stdout
    short = write_lines(tmp_path / "short", REFS1[:1])
    assert_clean_failure(invoke("eval", "rouge", "--hyp", h, "--ref", short), "1 lines")


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gpt2", "llama3-rope"])
def test_plan_param_count_equals_transformers(checkpoints, family):
    from transformers import AutoModelForCausalLM

    from llmasos.eval.plan import load_hf_config, param_counts
    from llmasos.models import ModelConfig

    cfg = ModelConfig.from_hf(load_hf_config(str(checkpoints[family])))
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoints[family]), dtype=torch.float32)
    p = param_counts(cfg)
    assert p.total == hf.num_parameters()
    assert p.embedding == sum(m.weight.numel() for m in hf.modules() if isinstance(m, torch.nn.Embedding))
    assert (p.lm_head == 0) == cfg.tie_word_embeddings


def test_plan_json_is_consistent(checkpoints):
    from llmasos.eval.plan import load_hf_config
    from llmasos.models import ModelConfig

    path = checkpoints["qwen3"]
    cfg = ModelConfig.from_hf(load_hf_config(str(path)))
    r = invoke_plan(str(path), "--no-probe", "--bandwidth-gbs", "50", "--tflops", "2", "--context", "1000",
                    "--batch", "3", "--seq-len", "256", "--micro-batch", "2", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    L, kvh, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    kv = d["kv_cache"]
    assert kv["bytes_per_token"] == 2 * L * kvh * hd * 2 and kv["bytes"] == kv["bytes_per_token"] * 1000 * 3
    p = d["params"]
    assert p["non_embedding"] == p["total"] - p["embedding"]
    w = d["weights_bytes"]
    assert w["float32"] == 4 * p["total"] and w["bfloat16"] == 2 * p["total"]
    assert w["float32"] > w["bfloat16"] > w["int8"] > w["int4"] > p["total"] / 2
    t = d["training"]
    assert t["weights"] == t["grads"] == 4 * p["total"] and t["optimizer"] == 8 * p["total"]
    assert t["total"] == t["weights"] + t["grads"] + t["optimizer"] + t["activations"] and t["activations"] > 0
    f = d["flops_per_token"]
    q = cfg.num_heads * hd
    assert f["forward_decode"] == 2 * p["matmul"] + 4 * L * 1000 * q
    assert f["forward_prefill"] == 2 * p["matmul"] + 4 * L * 500 * q
    assert f["training"] == pytest.approx(3 * (2 * p["matmul"] + 4 * L * 128 * q))
    assert f["6N"] == 6 * p["matmul"]
    hw = d["hardware"]
    assert hw["bandwidth_gbs"] == 50 and hw["tflops"] == {"bfloat16": 2, "float32": 2}
    assert set(hw["source"].values()) == {"given"}
    th = d["throughput"]
    assert th["prefill_tok_s"]["bfloat16"] == pytest.approx(2e12 / f["forward_prefill"])
    assert th["training_tok_s"]["float32"] == pytest.approx(2e12 / f["training"])
    dec = th["decode_tok_s"]
    assert dec["int4"] > dec["int8"] > dec["bfloat16"] > dec["float32"]
    # bf16 decode reads every weight but the (untied) embedding table, plus the KV cache at --context.
    read = 2 * (p["total"] - p["embedding"]) + kv["bytes_per_token"] * 1000
    assert dec["bfloat16"] == pytest.approx(50e9 / read)

    table = invoke_plan(str(path), "--no-probe")
    assert table.exit_code == 0 and "KV cache" in table.stdout


def test_plan_errors(tmp_path):
    r = invoke_plan("nobody-xyz/no-such-model", "--no-probe")  # HF_HUB_OFFLINE=1 in conftest
    assert_clean_failure(r, "nobody-xyz/no-such-model")
    assert_clean_failure(invoke_plan(str(tmp_path / "missing" / "dir"), "--no-probe"), "not found")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert_clean_failure(invoke_plan(str(tmp_path), "--no-probe"), "bert")


def test_hardware_probes_are_positive():
    from llmasos.eval.hardware import matmul_tflops, memory_bandwidth_gbs, probe

    assert matmul_tflops(torch.float32, size=128, repeats=2) > 0
    assert memory_bandwidth_gbs(nbytes=4 << 20, repeats=2) > 0
    hw = probe(run_probes=False, bandwidth_gbs=10.0)
    assert hw.tflops == {"bfloat16": None, "float32": None} and hw.source["bandwidth_gbs"] == "given"


def test_eval_subprocess_error_has_no_traceback(tmp_path):
    (tmp_path / "h").write_text("a\nb\n")
    (tmp_path / "r").write_text("a\n")
    r = subprocess.run([sys.executable, "-m", "llmasos.cli", "eval", "bleu", "--hyp", str(tmp_path / "h"), "--ref",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {tmp_path / 'r'} has 1 lines but the hypotheses have 2"

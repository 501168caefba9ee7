"""Sampling controls against `transformers`' logits processors and explicit definitions."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as hf

from llmasos.kernel.sampler import filter_logits, process_logits, sample
from llmasos.kernel.sampling_params import SamplingParams, StructuredOutput
from llmasos.kernel.sequence import Sequence


def mkseq(tokens, params, n_prompt=None, seed=None):
    s = Sequence(0, "r", 0, list(tokens), len(tokens) if n_prompt is None else n_prompt, params)
    if seed is not None:
        s.generator = torch.Generator().manual_seed(seed)
    return s


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(4, 200) * 3


def _finite(t):
    return torch.isfinite(t)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_k_matches_hf(logits, k):
    ours = filter_logits(logits, torch.full((4,), k), torch.ones(4), torch.zeros(4))
    ref = hf.TopKLogitsWarper(k)(None, logits.clone())
    assert torch.equal(_finite(ours), _finite(ref))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_top_p_matches_hf(logits, p):
    ours = filter_logits(logits, torch.zeros(4, dtype=torch.long), torch.full((4,), p), torch.zeros(4))
    ref = hf.TopPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(_finite(ours), _finite(ref))


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_min_p_matches_hf(logits, p):
    ours = filter_logits(logits, torch.zeros(4, dtype=torch.long), torch.ones(4), torch.full((4,), p))
    ref = hf.MinPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(_finite(ours), _finite(ref))


def test_per_row_settings_are_independent(logits):
    ours = filter_logits(logits, torch.tensor([1, 0, 0, 3]), torch.tensor([1.0, 0.5, 1.0, 1.0]),
                         torch.tensor([0.0, 0.0, 0.2, 0.0]))
    assert _finite(ours[0]).sum() == 1
    assert torch.equal(_finite(ours[1]), _finite(hf.TopPLogitsWarper(0.5)(None, logits[1:2].clone()))[0])
    assert torch.equal(_finite(ours[2]), _finite(hf.MinPLogitsWarper(0.2)(None, logits[2:3].clone()))[0])
    assert _finite(ours[3]).sum() == 3


def test_repetition_penalty_matches_hf(logits):
    tokens = [3, 7, 7, 150, 42]
    seq = mkseq(tokens, SamplingParams(repetition_penalty=1.3), n_prompt=2)
    ours = process_logits(logits[:1].clone(), [seq], eos_ids=[])
    ref = hf.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([tokens]), logits[:1].clone())
    assert torch.allclose(ours, ref)


def test_no_repeat_ngram_matches_hf(logits):
    tokens = [1, 2, 3, 9, 1, 2, 3, 4, 1, 2]
    seq = mkseq(tokens, SamplingParams(no_repeat_ngram_size=3))
    ours = process_logits(logits[:1].clone(), [seq], eos_ids=[])
    ref = hf.NoRepeatNGramLogitsProcessor(3)(torch.tensor([tokens]), logits[:1].clone())
    assert torch.equal(_finite(ours), _finite(ref))
    assert ours[0, 3] == float("-inf")  # "1 2" was followed by 3 before
    assert torch.isfinite(ours[0, 9])


def test_frequency_and_presence_penalties_follow_openai_definition(logits):
    prompt, out = [5, 5, 6], [8, 8, 8, 9]
    seq = mkseq(prompt + out, SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), n_prompt=3)
    ours = process_logits(logits[:1].clone(), [seq], eos_ids=[])
    expect = logits[:1].clone()
    expect[0, 8] -= 3 * 0.5 + 1.0
    expect[0, 9] -= 1 * 0.5 + 1.0  # prompt tokens (5, 6) are not penalised
    assert torch.allclose(ours, expect)


def test_min_tokens_bans_eos_and_logit_bias_applies(logits):
    seq = mkseq([1, 2], SamplingParams(min_tokens=2, logit_bias={10: 100.0}))
    ours = process_logits(logits[:1].clone(), [seq], eos_ids=[4])
    assert ours[0, 4] == float("-inf")
    assert ours[0, 10] == pytest.approx(logits[0, 10].item() + 100.0)


def test_greedy_is_argmax_and_logprobs_are_raw_log_softmax(logits):
    seqs = [mkseq([1], SamplingParams(temperature=0, logprobs=3)) for _ in range(4)]
    res = sample(logits, seqs, eos_ids=[])
    lsm = logits.log_softmax(-1)
    for i, r in enumerate(res):
        assert r.token_id == int(logits[i].argmax())
        assert r.logprob == pytest.approx(lsm[i, r.token_id].item(), abs=1e-5)
        top = lsm[i].topk(3)
        assert set(r.top_logprobs) == set(top.indices.tolist())


def test_seeded_sampling_is_reproducible_and_independent_of_batch(logits):
    p = SamplingParams(temperature=1.0, seed=1234)
    alone = [sample(logits[:1], [mkseq([1], p, seed=1234)], [])[0].token_id for _ in range(3)]
    assert len(set(alone)) == 1
    # Same seed inside a batch with unseeded neighbours: same draw.
    batch = [mkseq([1], p, seed=1234)] + [mkseq([1], SamplingParams(temperature=1.0)) for _ in range(3)]
    rows = torch.stack([logits[0], logits[1], logits[2], logits[3]])
    assert sample(rows, batch, [])[0].token_id == alone[0]


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]]))
    seq = mkseq([1], SamplingParams(temperature=1.0), seed=0)
    seq.generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(2000):
        counts[sample(logits, [seq], [])[0].token_id] += 1
    freq = counts / counts.sum()
    assert freq[3] == 0
    assert torch.allclose(freq[:3], torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


@pytest.mark.parametrize("bad", [
    dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(min_p=2), dict(n=0),
    dict(max_tokens=0), dict(repetition_penalty=0), dict(frequency_penalty=3), dict(stop=[""]),
    dict(stop_token_ids=["x"]), dict(logprobs=50), dict(temperature=float("nan")), dict(min_tokens=5, max_tokens=2),
    dict(stop=[3]),
])
def test_invalid_sampling_values_raise_value_error(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_structured_output_needs_exactly_one_constraint():
    with pytest.raises(ValueError):
        StructuredOutput()
    with pytest.raises(ValueError):
        StructuredOutput(regex="a+", choice=["a"])
    with pytest.raises(ValueError):
        StructuredOutput(choice=[])


def test_a_row_that_overflowed_samples_its_best_token_instead_of_failing_the_batch():
    """One request's logits turned to inf / nan must not fail the step for the others."""
    vocab = 32
    logits = torch.randn(3, vocab)
    logits[0, 5] = float("inf")
    logits[1, :] = float("nan")
    logits[1, 9] = 100.0
    seqs = [mkseq([1, 2], SamplingParams(temperature=1.0)) for _ in range(3)]
    out = sample(logits, seqs, eos_ids=[])
    assert out[0].token_id == 5 and out[1].token_id == 9 and 0 <= out[2].token_id < vocab

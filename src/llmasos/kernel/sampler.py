"""Turn a batch of logits into next tokens, each row under its own sampling controls.

Order of processing, per row: structured-output mask, logit bias, min_tokens (EOS banned), repetition /
frequency / presence penalties, no-repeat-n-gram ban; then greedy argmax, or temperature, top-k, top-p,
min-p and a draw from the row's own generator when it has a seed. Logprobs are those of the model's raw
distribution (before any processing), as in vLLM and the OpenAI API.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmasos.kernel.sequence import Sequence


@dataclass
class SampleResult:
    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


def _ngram_bans(tokens: list[int], n: int) -> list[int]:
    if n <= 0 or len(tokens) < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1 :])
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix]


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    rows = [i for i, s in enumerate(seqs) if s.params.repetition_penalty != 1.0
            or s.params.frequency_penalty or s.params.presence_penalty]
    if not rows:
        return
    vocab = logits.shape[-1]
    for i in rows:
        p = seqs[i].params
        row = logits[i]
        if p.repetition_penalty != 1.0:
            # HF/CTRL rule over prompt and output: shrink positive logits, push negative ones further down.
            seen = torch.tensor(sorted(set(seqs[i].token_ids)), dtype=torch.long, device=logits.device)
            seen = seen[seen < vocab]
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.frequency_penalty or p.presence_penalty:
            out_ids = torch.tensor(seqs[i].output_token_ids, dtype=torch.long, device=logits.device)
            out_ids = out_ids[out_ids < vocab]
            counts = torch.zeros(vocab, device=logits.device).scatter_add_(
                0, out_ids, torch.ones_like(out_ids, dtype=torch.float))
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()


def process_logits(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int],
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """All logit processors that do not depend on the sampling method; returns float32 logits."""
    logits = logits.float()
    if masks is not None:
        logits.masked_fill_(~masks, float("-inf"))
    for i, s in enumerate(seqs):
        p = s.params
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=logits.device)
            logits[i, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
        if s.num_output_tokens < p.min_tokens:
            ban = [t for t in list(eos_ids) + list(p.stop_token_ids) if t < logits.shape[-1]]
            if ban:
                logits[i, ban] = float("-inf")
        if p.no_repeat_ngram_size:
            ban = _ngram_bans(s.token_ids, p.no_repeat_ngram_size)
            if ban:
                logits[i, ban] = float("-inf")
    apply_penalties(logits, seqs)
    return logits


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Top-k, top-p (nucleus) and min-p filtering of temperature-scaled logits, one setting per row."""
    vocab = logits.shape[-1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        k = torch.where(top_k > 0, top_k, vocab)[:, None]
        drop = ranks >= k
        probs = sorted_logits.softmax(-1)
        # Keep the smallest set whose mass reaches top_p (the token that crosses it stays).
        cum_before = probs.cumsum(-1) - probs
        drop |= cum_before >= top_p[:, None]
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if bool((min_p > 0).any()):
        probs = logits.softmax(-1)
        thresh = probs.max(-1, keepdim=True).values * min_p[:, None]
        logits = logits.masked_fill(probs < thresh, float("-inf"))
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int],
           masks: torch.Tensor | None = None) -> list[SampleResult]:
    want_logprobs = any(s.params.logprobs is not None for s in seqs)
    raw_logprobs = logits.float().log_softmax(-1) if want_logprobs else None
    logits = process_logits(logits, seqs, eos_ids, masks)
    dev = logits.device
    tokens = logits.argmax(-1)
    stochastic = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if stochastic:
        sub = [seqs[i] for i in stochastic]
        temps = torch.tensor([s.params.temperature for s in sub], device=dev)
        scaled = filter_logits(
            logits[stochastic] / temps[:, None],
            torch.tensor([s.params.top_k for s in sub], device=dev),
            torch.tensor([s.params.top_p for s in sub], device=dev, dtype=torch.float),
            torch.tensor([s.params.min_p for s in sub], device=dev, dtype=torch.float),
        )
        probs = scaled.softmax(-1)
        bad = ~(torch.isfinite(probs).all(-1) & (probs.sum(-1) > 0))
        if bool(bad.any()):
            # A row that overflowed (an extreme bias or penalty) samples its most likely token instead of
            # failing the step, and with it every request in the batch.
            rows = bad.nonzero().squeeze(-1)
            best = torch.nan_to_num(logits[stochastic][rows].float(), nan=float("-inf")).argmax(-1)
            probs[rows] = 0.0
            probs[rows, best] = 1.0
        unseeded = [j for j, s in enumerate(sub) if s.generator is None]
        if unseeded:
            drawn = torch.multinomial(probs[unseeded], 1).squeeze(-1)
            tokens[[stochastic[j] for j in unseeded]] = drawn
        for j, s in enumerate(sub):
            if s.generator is not None:
                # Each seeded request draws from its own generator: reproducible whatever it is batched with.
                tokens[stochastic[j]] = torch.multinomial(probs[j], 1, generator=s.generator).squeeze(-1)
    token_list = tokens.tolist()
    results = []
    for i, s in enumerate(seqs):
        lp, top = 0.0, None
        if raw_logprobs is not None and s.params.logprobs is not None:
            lp = float(raw_logprobs[i, token_list[i]])
            top = {}
            if s.params.logprobs:
                vals, ids = raw_logprobs[i].topk(s.params.logprobs)
                top = dict(zip(ids.tolist(), vals.tolist(), strict=True))
            top[token_list[i]] = lp
        results.append(SampleResult(token_list[i], lp, top))
    return results

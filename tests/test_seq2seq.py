"""The encoder-decoder Transformer against explicit definitions, its own uncached paths, and a toy task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from llmasos.models import Seq2SeqConfig, Seq2SeqTransformer
from llmasos.models.seq2seq import MultiHeadAttention, sinusoidal_positions

PAD, BOS, EOS = 0, 1, 2
DIGIT0, NUM_DIGITS, MAX_DIGITS = 3, 10, 6  # digit d is token DIGIT0 + d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls run faster on one thread than split across two busy cores, and one thread keeps the
    # float reduction order, hence the toy training run, the same from run to run.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> Seq2SeqConfig:
    kw = dict(src_vocab_size=DIGIT0 + NUM_DIGITS, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2,
              num_decoder_layers=2, dropout=0.0, max_len=16)
    kw.update(overrides)
    return Seq2SeqConfig(**kw)


def random_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """An untrained model in float64, so that comparisons between computation orders can be tight."""
    torch.manual_seed(seed)
    return Seq2SeqTransformer(tiny_config(**overrides)).double().eval()


def digits_batch(n: int, gen: torch.Generator, min_len: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded digit sequences and their reversals followed by EOS."""
    lens = torch.randint(min_len, MAX_DIGITS + 1, (n,), generator=gen)
    pos = torch.arange(MAX_DIGITS)
    real = pos < lens[:, None]
    src = torch.where(real, torch.randint(DIGIT0, DIGIT0 + NUM_DIGITS, (n, MAX_DIGITS), generator=gen), PAD)
    reversed_ = src.gather(1, (lens[:, None] - 1 - pos).clamp(min=0))
    tgt = torch.full((n, MAX_DIGITS + 1), PAD)
    tgt[:, :MAX_DIGITS] = torch.where(real, reversed_, PAD)
    tgt[torch.arange(n), lens] = EOS
    return src, tgt


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=PAD)


def explicit_attention(attn: MultiHeadAttention, x, memory=None, key_padding_mask=None, causal=False):
    """Concat(head_1..head_h) W^O with head_i = softmax(Q_i K_i^T / sqrt(d_k)) V_i, one head at a time."""
    kv = x if memory is None else memory
    q = x @ attn.q_proj.weight.T + attn.q_proj.bias
    k = kv @ attn.k_proj.weight.T + attn.k_proj.bias
    v = kv @ attn.v_proj.weight.T + attn.v_proj.bias
    d_k = attn.head_dim
    heads = []
    for h in range(attn.num_heads):
        cols = slice(h * d_k, (h + 1) * d_k)
        scores = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d_k)  # [B, T, S]
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, :], -math.inf)
        if causal:
            t, s = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), -math.inf)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def uncached_greedy(model: Seq2SeqTransformer, src: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding one source at a time, rerunning the whole decoder on the whole prefix at every step."""
    rows = []
    for i in range(src.shape[0]):
        s = src[i : i + 1]
        s = s[:, : int((s != PAD).sum())]  # no padding at all: also checks that padding changes nothing
        memory = model.encode(s)
        seq = [BOS]
        for _ in range(max_new_tokens):
            logits = model.decode(torch.tensor([seq]), memory, None)[0, -1].clone()
            logits[[PAD, BOS]] = -math.inf
            seq.append(int(logits.argmax()))
            if seq[-1] == EOS:
                break
        rows.append(torch.tensor(seq[1:]))
    width = max(len(r) for r in rows)
    return torch.stack([F.pad(r, (0, width - len(r)), value=PAD) for r in rows])


@pytest.fixture(scope="module")
def trained() -> Seq2SeqTransformer:
    """The paper's post-LN model trained to reverse 2-6 digit sequences: 400 Adam steps, a few seconds."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Seq2SeqTransformer(tiny_config(d_model=64, d_ff=128))
    steps, warmup = 400, 30
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.0)
    # Linear warmup then linear decay to zero: the decay is what takes exact match from ~0.9 to ~1.0.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, (steps - s) / (steps - warmup))
    )
    model.train()
    for _ in range(steps):
        src, tgt = digits_batch(64, gen)
        loss = model.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def test_sinusoidal_positions_follow_the_paper() -> None:
    d = 10
    pe = sinusoidal_positions(50, d)
    assert pe.shape == (50, d)
    for pos, i in [(0, 0), (1, 0), (7, 2), (49, 4), (33, 1)]:
        angle = pos / 10000 ** (2 * i / d)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(5, 7).shape == (5, 7)  # odd widths keep the extra sine column


@pytest.mark.parametrize("case", ["self", "self-causal", "cross-padded", "self-padded-causal"])
def test_attention_matches_explicit_formula(case: str) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(24, 3).double().eval()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    memory = torch.randn(2, 7, 24, dtype=torch.float64) if case.startswith("cross") else None
    keys = 5 if memory is None else 7
    pad = torch.zeros(2, keys, dtype=torch.bool)
    pad[1, keys - 2 :] = True  # the second row's last two keys are padding
    kw = dict(memory=memory, key_padding_mask=pad if "padded" in case else None, causal="causal" in case)
    torch.testing.assert_close(attn(x, **kw), explicit_attention(attn, x, **kw), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm_first", [False, True])
def test_causal_mask_hides_later_target_tokens(norm_first: bool) -> None:
    model = random_model(norm_first=norm_first)
    src = torch.tensor([[3, 4, 5, 6, 7]])
    tgt = torch.tensor([[BOS, 8, 9, 10, 11, 12]])
    changed = tgt.clone()
    changed[0, 3] = 5
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)  # positions before the change: identical
    assert (a[:, 3:] - b[:, 3:]).abs().amax(-1).min() > 1e-3  # the changed position and after do see it


@pytest.mark.parametrize("norm_first", [False, True])
def test_source_padding_changes_nothing(norm_first: bool) -> None:
    model = random_model(norm_first=norm_first)
    short, long = [3, 9, 4, 8], [5, 6, 7, 8, 9, 10, 11]
    src = torch.tensor([short + [PAD] * 3, long])
    tgt = torch.tensor([[BOS, 5, 6, 7], [BOS, 12, 3, 4]])
    memory = model.encode(src)
    torch.testing.assert_close(memory[0, :4], model.encode(torch.tensor([short]))[0], rtol=1e-10, atol=1e-10)
    batched = model(src, tgt)
    torch.testing.assert_close(batched[0], model(torch.tensor([short]), tgt[:1])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(batched[1], model(torch.tensor([long]), tgt[1:])[0], rtol=1e-10, atol=1e-10)


def test_all_padding_source_stays_finite_and_isolated() -> None:
    model = random_model()
    src = torch.tensor([[PAD, PAD, PAD], [3, 4, 5]])
    tgt = torch.tensor([[BOS, 6], [BOS, 7]])
    logits = model(src, tgt)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1], model(src[1:], tgt[1:])[0], rtol=1e-10, atol=1e-10)


def test_cached_decoding_matches_full_decoder() -> None:
    model = random_model()
    src = torch.tensor([[3, 4, 5, 6, PAD], [7, 8, 9, 10, 11]])
    tgt = torch.tensor([[BOS, 5, 6, 7, 8, 9, 10, 11], [BOS, 12, 3, 4, 5, 6, 7, 8]])
    memory, pad = model.encode(src), src == PAD
    full = model.decode(tgt, memory, pad)
    cache = model.decoder.make_cache(memory, tgt.shape[1])
    start, pieces = 0, []
    for size in [1, 3, 1, 2, 1]:  # one token at a time, as in generation, and chunks after a cached prefix
        pieces.append(model.decode(tgt[:, start : start + size], memory, pad, cache))
        start += size
    assert cache.length == tgt.shape[1]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-10)


def test_cached_greedy_generation_matches_uncached_greedy() -> None:
    model = random_model(seed=3)
    src = torch.tensor([[3, 4, 5, PAD, PAD], [6, 7, 8, 9, 10], [11, 12, PAD, PAD, PAD]])
    torch.testing.assert_close(model.generate(src, 9), uncached_greedy(model, src, 9), rtol=0, atol=0)


def test_model_learns_to_reverse_digits(trained: Seq2SeqTransformer) -> None:
    src, tgt = digits_batch(200, torch.Generator().manual_seed(12345))
    width = tgt.shape[1]
    for num_beams in (1, 3):
        out = trained.generate(src, MAX_DIGITS + 2, num_beams=num_beams)
        exact = (pad_to(out, width) == tgt).all(1).float().mean().item() if out.shape[1] <= width else 0.0
        assert exact >= 0.95, f"num_beams={num_beams}: exact match {exact:.3f}"


def test_trained_batched_generation_stops_per_row_and_matches_uncached(trained: Seq2SeqTransformer) -> None:
    src, _ = digits_batch(12, torch.Generator().manual_seed(7))
    out = trained.generate(src, MAX_DIGITS + 2)
    expected = uncached_greedy(trained, src, MAX_DIGITS + 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    lengths = (out != PAD).sum(1)
    assert lengths.unique().numel() > 1  # rows really stopped at different steps
    for row, n in zip(out, lengths, strict=True):
        assert row[n - 1] == EOS and (row[:n - 1] != EOS).all()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_is_exact_when_beams_hold_every_hypothesis(length_penalty: float) -> None:
    # Output tokens eos, a, b and up to 4 new tokens: 31 hypotheses at most, so 32 beams prune nothing and
    # beam search must return the best sequence of an exhaustive search. A sharpened untied output layer
    # makes the random model's choices depend on context, and on these sources greedy misses the best.
    model = random_model(
        seed=3, src_vocab_size=5, d_model=16, num_heads=2, d_ff=32, tie_output_embeddings=False
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    src = torch.tensor([[4, 3, 3, 4], [3, 4, 3, 4]])
    max_new = 4
    out = model.generate(src, max_new, num_beams=32, length_penalty=length_penalty)
    greedy = model.generate(src, max_new)
    for i in range(src.shape[0]):
        s = src[i : i + 1]
        memory, pad = model.encode(s), s == PAD
        best, best_score = None, -math.inf
        for n in range(1, max_new + 1):
            for body in itertools.product([3, 4], repeat=n):
                seqs = [list(body[:-1]) + [EOS]] + ([list(body)] if n == max_new else [])
                for seq in seqs:
                    logits = model.decode(torch.tensor([[BOS] + seq[:-1]]), memory, pad)[0].clone()
                    logits[:, [PAD, BOS]] = -math.inf
                    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq)[:, None]).sum().item()
                    score = logp / len(seq) ** length_penalty
                    if score > best_score:
                        best, best_score = seq, score
        assert out[i][out[i] != PAD].tolist() == best, f"row {i}"
        assert greedy[i][greedy[i] != PAD].tolist() != best  # the search did more than greedy would


def test_loss_is_padding_free_teacher_forced_cross_entropy() -> None:
    model = random_model()
    src = torch.tensor([[3, 4, 5, PAD], [6, 7, 8, 9]])
    tgt = torch.tensor([[5, 4, 3, EOS, PAD], [9, 8, 7, 6, EOS]])
    dec_in = torch.tensor([[BOS, 5, 4, 3, EOS], [BOS, 9, 8, 7, 6]])
    assert torch.equal(model.shift_right(tgt), dec_in)
    logp = torch.log_softmax(model(src, dec_in), -1)
    real = tgt != PAD
    nll = -logp.gather(-1, tgt[..., None])[..., 0][real]
    assert model.loss(src, tgt).item() == pytest.approx(nll.mean().item(), rel=1e-12)
    # Label smoothing mixes in the cross-entropy against the uniform distribution over the vocabulary.
    eps = 0.1
    smooth = ((1 - eps) * nll - eps * logp[real].mean(-1)).mean().item()
    assert model.loss(src, tgt, label_smoothing=eps).item() == pytest.approx(smooth, rel=1e-12)
    # More padding columns change neither the tokens scored nor their context.
    wider = model.loss(pad_to(src, 7), pad_to(tgt, 8))
    assert wider.item() == pytest.approx(model.loss(src, tgt).item(), rel=1e-10)


def test_embedding_sharing_and_tying() -> None:
    shared = Seq2SeqTransformer(tiny_config(share_embeddings=True))
    assert shared.encoder.embed.weight is shared.decoder.embed.weight is shared.lm_head.weight
    untied = Seq2SeqTransformer(tiny_config(tgt_vocab_size=20, tie_output_embeddings=False))
    assert untied.lm_head.weight.shape == (20, 32)
    assert untied.lm_head.weight is not untied.decoder.embed.weight
    assert untied.encoder.embed.weight.shape == (DIGIT0 + NUM_DIGITS, 32)
    # A tied matrix is one parameter: exactly two embedding tables fewer than the fully untied model.
    loose = Seq2SeqTransformer(tiny_config(tie_output_embeddings=False))
    assert loose.num_parameters() - shared.num_parameters() == 2 * (DIGIT0 + NUM_DIGITS) * 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=30, num_heads=4), "divisible by num_heads"),
        (dict(num_heads=0), "num_heads must be a positive integer"),
        (dict(num_encoder_layers=0), "num_encoder_layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
        (dict(pad_id=13), "pad_id"),
        (dict(eos_id=PAD), "must differ"),
        (dict(bos_id=40), "bos_id"),
        (dict(tgt_vocab_size=20, share_embeddings=True), "share_embeddings"),
        (dict(tgt_vocab_size=2, eos_id=2), "eos_id"),
    ],
)
def test_config_rejects_inconsistent_settings(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_inputs_beyond_limits_are_value_errors() -> None:
    model = random_model()
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.full((1, 17), 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.tensor([[3, 4]]), 17)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(torch.tensor([[3, 4]]), 4, num_beams=0)

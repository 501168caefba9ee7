"""Training the encoder-decoder Transformer (`llmasos.models.seq2seq`) on source -> target pairs.

Data is JSONL, one `{"source": "...", "target": "..."}` per line (title generation, text correction,
translation, ...). Both sides share one byte-level BPE tokenizer trained on the pairs, whose special ids match
`Seq2SeqConfig`'s defaults (pad 0, bos 1, eos 2). Training runs in the shared `Trainer` (schedule, clipping,
checkpoints, resume, metrics.jsonl, loss.png, DDP); the finished model is scored with corpus BLEU and ROUGE-L on
the validation split and saved as `seq2seq_config.json` + `model.safetensors` + the tokenizer.

`correction_pairs` makes a demo task from text that ships with Python: sentences with injected typos and
duplicated words -> the clean sentence.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmasos.train.config import TrainConfig
from llmasos.train.data import DataError, read_jsonl
from llmasos.train.trainer import Trainer, TrainResult

CONFIG_FILE = "seq2seq_config.json"
WEIGHTS_FILE = "model.safetensors"

Pair = tuple[str, str]


# -- data ----------------------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> list[Pair]:
    """(source, target) of each JSONL line; a line without two non-empty strings is a DataError naming it."""
    p = Path(path)
    pairs = []
    for lineno, obj in read_jsonl(p):
        src, tgt = obj.get("source"), obj.get("target")
        if not isinstance(src, str) or not isinstance(tgt, str) or not src.strip() or not tgt.strip():
            raise DataError(f"{p}:{lineno}: needs non-empty string fields 'source' and 'target'")
        pairs.append((src.strip(), tgt.strip()))
    if len(pairs) < 2:
        raise DataError(f"{p}: needs at least 2 pairs (one to train on, one to validate), found {len(pairs)}")
    return pairs


def split_pairs(pairs: Sequence[Pair], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Train / validation split by target text, so a target (e.g. a sentence seen with other noise) never
    appears on both sides and the validation score measures generalisation, not recall."""
    targets = sorted({t for _, t in pairs})
    random.Random(seed).shuffle(targets)
    if len(targets) < 2:  # one distinct target: nothing to group by
        return list(pairs[1:]), list(pairs[:1])
    n_val = min(len(targets) - 1, max(1, round(len(targets) * val_fraction)))
    held = set(targets[:n_val])
    return [p for p in pairs if p[1] not in held], [p for p in pairs if p[1] in held]


def demo_sentences(min_words: int = 5, max_words: int = 14) -> Iterator[str]:
    """Short sentences of Python's reference topics (`pydoc_data`, in every CPython install)."""
    from llmasos.train.recipes.sources import python_topics

    seen = set()
    for para in python_topics():
        for s in re.split(r"(?<=[.!?])\s+", para):
            words = s.split()
            # Plain prose only: code fragments and markup would make the task about punctuation noise.
            if min_words <= len(words) <= max_words and s[0].isupper() and s.endswith(".") \
                    and re.fullmatch(r"[A-Za-z ,.'-]+", s) and s not in seen:
                seen.add(s)
                yield s


def corrupt(sentence: str, rng: random.Random, typo_rate: float = 0.15, dup_rate: float = 0.1) -> str:
    """Typos (swapped, dropped or doubled letters) and duplicated words; at least one edit per sentence."""
    words = sentence.split()
    while True:
        out = []
        for w in words:
            if len(w) > 3 and rng.random() < typo_rate:
                i = rng.randrange(1, len(w) - 2)
                kind = rng.randrange(3)
                w = (w[:i] + w[i + 1] + w[i] + w[i + 2:] if kind == 0 else
                     w[:i] + w[i + 1:] if kind == 1 else w[:i] + w[i] + w[i:])
            out.append(w)
            if rng.random() < dup_rate:
                out.append(w)
        noisy = " ".join(out)
        if noisy != sentence:
            return noisy


def correction_pairs(n: int, seed: int = 0, sentences: Iterable[str] | None = None) -> list[dict[str, str]]:
    """`n` {"source": noisy, "target": clean} records (sentences reused with fresh noise when n exceeds them)."""
    pool = list(sentences if sentences is not None else demo_sentences())
    if not pool:
        raise DataError("no sentences to build the correction task from")
    rng = random.Random(seed)
    return [{"source": corrupt(s, rng), "target": s} for s in (pool[i % len(pool)] for i in range(n))]


# -- batches and loss ----------------------------------------------------------------------------------------
@dataclass
class Seq2SeqExample:
    src: list[int]
    tgt: list[int]  # EOS-terminated, no BOS (what `Seq2SeqTransformer.loss` expects)


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_len: int) -> list[Seq2SeqExample]:  # noqa: ANN001
    """Token ids of both sides; longer texts are truncated (the target keeps room for its EOS)."""
    srcs = tokenizer([s for s, _ in pairs], add_special_tokens=False)["input_ids"]
    tgts = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [Seq2SeqExample(s[:max_len], [*t[: max_len - 1], eos]) for s, t in zip(srcs, tgts, strict=True)]


def _pad(rows: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


class Seq2SeqBatches:
    """Random training batches and a fixed validation pass, in the `Trainer`'s batch-source protocol.

    `input_ids` holds the source (the Trainer counts its tokens) and `labels` the target with -100 on
    padding (the Trainer weights validation batches by their label tokens).
    """

    def __init__(self, train: list[Seq2SeqExample], val: list[Seq2SeqExample], batch_size: int, pad_id: int) -> None:
        if not train or not val:
            raise DataError("both the training and the validation split need at least one pair")
        self.train, self.val, self.batch_size, self.pad_id = train, val, batch_size, pad_id

    def _collate(self, batch: Sequence[Seq2SeqExample]) -> dict[str, torch.Tensor]:
        src, tgt = _pad([e.src for e in batch], self.pad_id), _pad([e.tgt for e in batch], self.pad_id)
        return {"input_ids": src, "tgt_ids": tgt, "labels": tgt.masked_fill(tgt == self.pad_id, -100)}

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.train), (self.batch_size,), generator=generator).tolist()
        return self._collate([self.train[i] for i in idx])

    def val_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, len(self.val), self.batch_size):
            yield self._collate(self.val[i : i + self.batch_size])


def seq2seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced cross-entropy, called through `model(...)` so that a DDP wrapper syncs gradients."""
    inner: Seq2SeqTransformer = getattr(model, "module", model)
    tgt = batch["tgt_ids"]
    logits = model(batch["input_ids"], inner.shift_right(tgt))
    return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=inner.config.pad_id,
                           label_smoothing=inner.config.label_smoothing if model.training else 0.0)


# -- model spec, save / load ---------------------------------------------------------------------------------
@dataclass
class Seq2SeqSpec:
    """Model shape and tokenizer size; the rest of `Seq2SeqConfig` follows from the tokenizer."""

    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 1024
    layers: int = 3
    dropout: float = 0.1
    max_len: int = 128
    vocab_size: int = 4000
    label_smoothing: float = 0.1
    norm_first: bool = True  # pre-LN trains stably at high learning rates without a long warmup


def model_config(spec: Seq2SeqSpec, tokenizer) -> Seq2SeqConfig:  # noqa: ANN001
    return Seq2SeqConfig(src_vocab_size=len(tokenizer), d_model=spec.d_model, num_heads=spec.num_heads,
                         d_ff=spec.d_ff, num_encoder_layers=spec.layers, num_decoder_layers=spec.layers,
                         dropout=spec.dropout, max_len=spec.max_len, pad_id=tokenizer.pad_token_id,
                         bos_id=tokenizer.convert_tokens_to_ids("<|im_start|>"), eos_id=tokenizer.eos_token_id,
                         norm_first=spec.norm_first, share_embeddings=True, tie_output_embeddings=True,
                         label_smoothing=spec.label_smoothing)


def save_seq2seq(model: Seq2SeqTransformer, tokenizer, out_dir: str | Path) -> Path:  # noqa: ANN001
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))
    save_model(model, str(out / WEIGHTS_FILE))  # save_model (not save_file) handles the tied embeddings
    tokenizer.save_pretrained(str(out))
    return out


def load_seq2seq(model_dir: str | Path, device: str = "cpu"):  # noqa: ANN201 - (model, tokenizer)
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    d = Path(model_dir)
    if not (d / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{d}: not a seq2seq model directory (no {CONFIG_FILE})")
    model = Seq2SeqTransformer(Seq2SeqConfig(**json.loads((d / CONFIG_FILE).read_text())))
    load_model(model, str(d / WEIGHTS_FILE), device=device)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(str(d))


@torch.no_grad()
def generate_texts(model: Seq2SeqTransformer, tokenizer, sources: Sequence[str], max_new_tokens: int | None = None,  # noqa: ANN001
                   num_beams: int = 1, batch_size: int = 32) -> list[str]:
    """Decoded outputs for `sources` (greedy, or beam search with `num_beams` > 1)."""
    model.eval()
    device = next(model.parameters()).device
    cfg = model.config
    limit = max_new_tokens or cfg.max_len
    outs = []
    for i in range(0, len(sources), batch_size):
        ids = tokenizer(list(sources[i : i + batch_size]), add_special_tokens=False)["input_ids"]
        src = _pad([r[: cfg.max_len] or [cfg.eos_id] for r in ids], cfg.pad_id).to(device)
        gen = model.generate(src, limit, num_beams=num_beams)
        for row in gen.tolist():
            row = [t for t in row if t not in (cfg.pad_id, cfg.eos_id, cfg.bos_id)]
            outs.append(tokenizer.decode(row).strip())
    return outs


def score(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    from llmasos.eval.bleu import bleu
    from llmasos.eval.rouge import rouge_l

    return {"bleu": bleu(hyps, [list(refs)])["bleu"], "rougeL": rouge_l(hyps, [list(refs)])["rougeL"]["fmeasure"]}


# -- the job -------------------------------------------------------------------------------------------------
@dataclass
class Seq2SeqResult:
    train: dict
    val_bleu: float
    val_rougeL: float  # noqa: N815 - the metric's name
    copy_bleu: float  # BLEU of the untouched sources: the bar a correction model must clear
    val_examples: int
    parameters: int
    model_dir: str
    samples: list[dict[str, str]]


def train_seq2seq(pairs: Sequence[Pair], cfg: TrainConfig, spec: Seq2SeqSpec | None = None,
                  val_fraction: float = 0.1, eval_examples: int = 200, num_beams: int = 1, resume: bool = False,
                  progress: bool = True) -> Seq2SeqResult:
    """Tokenizer, model, training, validation BLEU / ROUGE-L, and the model saved to `<out_dir>/model`."""
    from transformers import AutoTokenizer

    from llmasos.train.tokenizer import MIN_VOCAB, train_tokenizer

    spec = spec or Seq2SeqSpec()
    out = Path(cfg.out_dir)
    train_pairs, val_pairs = split_pairs(pairs, val_fraction, cfg.seed)
    tok_dir = out / "tokenizer"
    if resume and (tok_dir / "tokenizer.json").is_file():  # the checkpoint's ids must mean the same tokens
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        texts = [t for p in train_pairs for t in p]
        tokenizer = train_tokenizer(texts, max(spec.vocab_size, MIN_VOCAB), tok_dir, min_frequency=2)
    model_cfg = model_config(spec, tokenizer)
    torch.manual_seed(cfg.seed)
    model = Seq2SeqTransformer(model_cfg)
    data = Seq2SeqBatches(encode_pairs(tokenizer, train_pairs, spec.max_len),
                          encode_pairs(tokenizer, val_pairs, spec.max_len), cfg.batch_size, model_cfg.pad_id)
    trainer = Trainer(model, cfg, data, seq2seq_loss, extra_state={"seq2seq_config": asdict(model_cfg)},
                      progress=progress, title="seq2seq training")
    result: TrainResult = trainer.fit(resume=resume)
    ev = val_pairs[:eval_examples]
    hyps = generate_texts(model, tokenizer, [s for s, _ in ev], num_beams=num_beams)
    refs = [t for _, t in ev]
    scores = score(hyps, refs)
    model_dir = out / "model"
    if trainer.ctx.is_main:
        save_seq2seq(model.cpu(), tokenizer, model_dir)
    res = Seq2SeqResult(train=asdict(result), val_bleu=scores["bleu"], val_rougeL=scores["rougeL"],
                        copy_bleu=score([s for s, _ in ev], refs)["bleu"], val_examples=len(ev),
                        parameters=model.num_parameters(), model_dir=str(model_dir),
                        samples=[{"source": s, "output": h, "target": t} for (s, t), h in zip(ev[:3], hyps, strict=False)])
    if trainer.ctx.is_main:
        (out / "eval.json").write_text(json.dumps(asdict(res), indent=2))
    return res

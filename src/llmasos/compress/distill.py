"""Knowledge distillation: a shallower student, initialised from the teacher's layers, trained on its logits.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels) + hidden_weight * cos_loss

`_T` is softmax at temperature T; the T^2 keeps the soft-target gradients on the same scale as the hard ones
whatever T is (Hinton et al., 2015). `reverse_kl` uses KL(student_T || teacher_T) instead: mode-seeking, which
suits a small student that cannot cover all of the teacher's modes. The optional hidden-state term is
1 - cosine similarity between each student layer's output and the teacher layer output it stands in for.

The student copies the embeddings, final norm, LM head and the mapped blocks of the teacher (e.g. every other
layer: DistilBERT's recipe), so training starts from a working network instead of from noise. Training runs on
`llmasos.train.trainer.Trainer`; the teacher is frozen and run under `no_grad` inside the loss closure.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.compress.common import (
    RunSettings,
    clamp_seq_len,
    count_params,
    eval_ppl,
    load_fp32,
    load_tokenizer,
    source_dtype,
    token_windows,
)
from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM
from llmasos.models.hf_format import save_hf_checkpoint


@dataclass
class KDConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft (KL) term; 1 - alpha goes to the hard cross-entropy
    hidden_weight: float = 0.0
    reverse_kl: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.hidden_weight >= 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")


# -- losses ----------------------------------------------------------------------------------------------
def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
          reverse: bool = False) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) (or the reverse), summed over the vocabulary, averaged over the
    positions whose label is not -100."""
    mask = labels.reshape(-1) != -100
    s = F.log_softmax(student_logits.float().flatten(0, -2)[mask] / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().flatten(0, -2)[mask] / temperature, dim=-1)
    p, q = (s, t) if reverse else (t, s)  # KL(p || q) with log-probabilities p, q
    kl = (p.exp() * (p - q)).sum(-1)
    return kl.mean() * temperature**2 if kl.numel() else student_logits.sum() * 0.0


def hidden_cosine_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], labels: torch.Tensor,
                       ) -> torch.Tensor:
    """Mean over paired layers and unmasked positions of 1 - cos(student hidden, teacher hidden)."""
    mask = labels.reshape(-1) != -100
    losses = [1.0 - F.cosine_similarity(s.float().flatten(0, -2)[mask], t.float().flatten(0, -2)[mask], dim=-1)
              .mean() for s, t in zip(student, teacher, strict=True)]
    return torch.stack(losses).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, cfg: KDConfig,
            student_hidden: list[torch.Tensor] | None = None, teacher_hidden: list[torch.Tensor] | None = None,
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """The full distillation loss and its parts (`kl`, `ce`, `hidden`) as floats for logging."""
    kl = kd_kl(student_logits, teacher_logits, labels, cfg.temperature, cfg.reverse_kl)
    ce = F.cross_entropy(student_logits.float().flatten(0, -2), labels.reshape(-1), ignore_index=-100)
    loss = cfg.alpha * kl + (1.0 - cfg.alpha) * ce
    parts = {"kl": float(kl.detach()), "ce": float(ce.detach())}
    if cfg.hidden_weight > 0 and student_hidden is not None and teacher_hidden is not None:
        hid = hidden_cosine_loss(student_hidden, teacher_hidden, labels)
        loss = loss + cfg.hidden_weight * hid
        parts["hidden"] = float(hid.detach())
    return loss, parts


@contextmanager
def capture_layer_outputs(model: nn.Module, indices: list[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of `model.layers[i]` for `indices` (in that order) during forwards inside the block.

    Forward hooks rather than a second forward path: DecoderLM stays as it is, and DDP-wrapped models work.
    """
    inner = getattr(model, "module", model)
    found: dict[int, torch.Tensor] = {}
    out: list[torch.Tensor] = []

    def hook(i: int):  # noqa: ANN202
        def fn(_mod: nn.Module, _inp: Any, output: torch.Tensor) -> None:
            found[i] = output
        return fn

    handles = [inner.layers[i].register_forward_hook(hook(i)) for i in sorted(set(indices))]
    try:
        yield out
        out.extend(found[i] for i in indices)
    finally:
        for h in handles:
            h.remove()


# -- the student -----------------------------------------------------------------------------------------
def layer_map(num_teacher_layers: int, num_layers: int | None = None, keep_every: int | None = None) -> list[int]:
    """Teacher layer each student layer is copied from: every `keep_every`-th layer, or `num_layers` spread
    evenly from the first (both unset: every other layer)."""
    n = num_teacher_layers
    if num_layers is not None and keep_every is not None:
        raise ValueError("give the student's depth either as num_layers or as keep_every, not both")
    if num_layers is None:
        k = 2 if keep_every is None else keep_every
        if k < 1:
            raise ValueError(f"keep_every must be >= 1, got {k}")
        return list(range(0, n, k))
    if not 1 <= num_layers <= n:
        raise ValueError(f"the student needs between 1 and {n} layers (the teacher's depth), got {num_layers}")
    return [i * n // num_layers for i in range(num_layers)]


def hidden_targets(mapping: list[int], num_teacher_layers: int) -> list[int]:
    """Teacher layer whose output student layer i should match: the last teacher layer before the next mapped
    one (student layer i replaces teacher layers mapping[i] .. mapping[i+1]-1), the teacher's last for the last."""
    return [nxt - 1 for nxt in mapping[1:]] + [num_teacher_layers - 1]


def student_hf_config(teacher_hf: dict[str, Any], num_layers: int) -> dict[str, Any]:
    cfg = copy.deepcopy(teacher_hf)
    cfg["n_layer" if cfg.get("model_type") == "gpt2" else "num_hidden_layers"] = num_layers
    for key in ("layer_types", "max_window_layers"):  # per-layer lists sized for the teacher's depth
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:num_layers]
    return cfg


def init_student(teacher: DecoderLM, teacher_hf: dict[str, Any], mapping: list[int],
                 ) -> tuple[DecoderLM, dict[str, Any]]:
    """A student with `len(mapping)` blocks; block i, embeddings, norms and head copied from the teacher."""
    hf = student_hf_config(teacher_hf, len(mapping))
    student = DecoderLM(ModelConfig.from_hf(hf)).float()
    src = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        if key.startswith("rope."):
            continue
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            state[key] = src[f"layers.{mapping[int(i)]}.{rest}"]
        else:
            state[key] = src[key]
    student.load_state_dict(state, strict=False)
    return student.train(), hf


# -- the job ---------------------------------------------------------------------------------------------
def make_loss_fn(teacher: DecoderLM, cfg: KDConfig, mapping: list[int]):  # noqa: ANN201 - a Trainer LossFn
    """`loss_fn(student, batch)` for the Trainer: the frozen teacher runs under no_grad inside it."""
    s_idx = list(range(len(mapping)))
    t_idx = hidden_targets(mapping, teacher.config.num_layers)
    use_hidden = cfg.hidden_weight > 0

    def loss_fn(student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, labels = batch["input_ids"], batch["labels"]
        with torch.no_grad(), capture_layer_outputs(teacher, t_idx if use_hidden else []) as t_hid:
            t_logits = teacher(ids)
        with capture_layer_outputs(student, s_idx if use_hidden else []) as s_hid:
            s_logits = student(ids)
        loss, _ = kd_loss(s_logits, t_logits, labels, cfg, s_hid or None, t_hid or None)
        return loss

    return loss_fn


@torch.no_grad()
def kd_eval_loss(student: DecoderLM, teacher: DecoderLM, batches: list[dict[str, torch.Tensor]], cfg: KDConfig,
                 mapping: list[int]) -> float:
    """Mean distillation loss over fixed batches (to compare before and after training)."""
    fn = make_loss_fn(teacher, cfg, mapping)
    was = student.training
    student.eval()
    try:
        return sum(float(fn(student, b)) for b in batches) / len(batches)
    finally:
        student.train(was)


@dataclass
class DistillReport:
    out_dir: str
    layer_map: list[int]
    teacher_params: int
    student_params: int
    teacher_ppl: float
    student_ppl_init: float
    student_ppl: float
    steps: int
    final_loss: float | None


def distill(teacher: str | Path, data_dir: str | Path, out_dir: str | Path, kd: KDConfig | None = None,
            run: RunSettings | None = None, num_layers: int | None = None, keep_every: int | None = None,
            eval_windows: int = 32, progress: bool = False) -> DistillReport:
    """Distil `teacher` (HF dir) into a shallower student on a prepared dataset; the student is written to
    `out_dir` as a Hugging Face directory (Trainer state in `out_dir/run`)."""
    from llmasos.train.pretrain import LMBatches
    from llmasos.train.trainer import Trainer

    kd = kd or KDConfig()
    t_model, t_hf, t_dir = load_fp32(teacher)
    t_model.requires_grad_(False).eval()
    mapping = layer_map(t_model.config.num_layers, num_layers, keep_every)
    run = clamp_seq_len(run or RunSettings(), t_model.config.max_position, data_dir)
    student, s_hf = init_student(t_model, t_hf, mapping)
    val = token_windows(data_dir, "val", run.seq_len, eval_windows)
    teacher_ppl, init_ppl = eval_ppl(t_model, val), eval_ppl(student, val)

    out = Path(out_dir)
    trainer = Trainer(student, run.train_config(out / "run"), LMBatches(data_dir, run.batch_size, run.seq_len),
                      make_loss_fn(t_model, kd, mapping), progress=progress, title="distilling",
                      extra_state={"hf_config": s_hf, "layer_map": mapping, "kd": vars(kd)})
    t_model.to(trainer.ctx.device)
    result = trainer.fit()
    student.cpu()
    if trainer.ctx.is_main:
        save_hf_checkpoint(student, s_hf, out, tokenizer=load_tokenizer(t_dir), dtype=source_dtype(t_hf))
    return DistillReport(out_dir=str(out), layer_map=mapping, teacher_params=count_params(t_model.cpu()),
                         student_params=count_params(student), teacher_ppl=teacher_ppl, student_ppl_init=init_ppl,
                         student_ppl=eval_ppl(student, val), steps=result.steps, final_loss=result.final_loss)

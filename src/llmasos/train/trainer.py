"""The training loop every toolchain job runs: pre-training, fine-tuning, adapters, distillation, pruning recovery.

What it owns: AdamW with decoupled weight decay on matrices only, the lr schedule, gradient accumulation and
clipping (the pre-clip norm is logged), skipping steps whose loss or gradient is not finite, bf16 autocast
where the hardware has it, periodic validation, atomic checkpoints with exact resume, DDP under `torchrun`,
a Rich progress bar, `metrics.jsonl` and a loss-curve PNG. What a job brings: the model, a batch source and
a loss function.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.train.config import TrainConfig
from llmasos.train.distributed import DistContext, init_distributed
from llmasos.train.plot import plot_loss
from llmasos.train.schedule import lr_at

log = logging.getLogger("llmasos.train")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class BatchSource(Protocol):
    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def val_batches(self) -> Iterable[dict[str, torch.Tensor]]: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy; label -100 marks positions that carry no loss (prompts, padding)."""
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    # Without AVX512-BF16 or AMX, bf16 matmuls are emulated and slower than fp32.
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_optimizer(params: list[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; decay only on matrices (weights, embeddings), never on norms' gains or biases."""
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    tokens: int
    seconds: float
    final_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    skipped_steps: int
    precision: str


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, data: BatchSource, loss_fn: LossFn = causal_lm_loss,
                 extra_state: dict[str, Any] | None = None, progress: bool = True, title: str = "training",
                 dist_ctx: DistContext | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.loss_fn = loss_fn
        self.extra_state = extra_state or {}
        self.progress = progress
        self.title = title
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.ctx = dist_ctx or init_distributed()
        self.model = model.to(self.ctx.device)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = build_optimizer(self.params, cfg)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(self.ctx.device))
        self.precision = "bf16" if use_bf16 else "fp32"
        self.out = Path(cfg.out_dir)
        self.step = 0
        self.records: list[dict] = []
        self.train_model: nn.Module = model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(model)

    # -- checkpoints ---------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def save_checkpoint(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "params": {n: p.detach().cpu() for n, p in self.params},
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.model_dump(),
            "extra": self.extra_state,
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a kill mid-write leaves the previous checkpoint intact

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        mine = dict(self.params)
        missing = set(mine) - set(state["params"])
        if missing or set(state["params"]) - set(mine):
            raise ValueError(f"{self.checkpoint_path} was written for a different model "
                             f"(parameters differ, e.g. {sorted(missing or set(state['params']) - set(mine))[:3]})")
        with torch.no_grad():
            for n, p in self.params:
                if p.shape != state["params"][n].shape:
                    raise ValueError(f"{self.checkpoint_path}: {n} has shape {tuple(state['params'][n].shape)}, "
                                     f"the model has {tuple(p.shape)}")
                p.copy_(state["params"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        metrics = self.out / METRICS
        if metrics.is_file():  # drop what was logged after the checkpoint: those steps will be redone
            self.records = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["step"] <= self.step]
            if self.ctx.is_main:
                metrics.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    # -- the loop ------------------------------------------------------------------------------------------
    def _generator(self, micro: int) -> torch.Generator:
        # Seeded from (seed, rank, step, micro): resuming at step s replays exactly the batches s would have seen.
        g = torch.Generator()
        g.manual_seed(hash((self.cfg.seed, self.ctx.rank, self.step, micro)) & ((1 << 62) - 1))
        return g

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _autocast(self):  # noqa: ANN202
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def evaluate(self) -> float:
        """Mean validation loss (token-weighted where the source says how many tokens a batch holds)."""
        self.model.eval()
        total, count = 0.0, 0.0
        with torch.no_grad(), self._autocast():
            for i, batch in enumerate(self.data.val_batches()):
                if i >= self.cfg.eval_batches * self.ctx.world_size:
                    break
                if i % self.ctx.world_size != self.ctx.rank:
                    continue
                batch = self._to_device(batch)
                n = float((batch["labels"] != -100).sum()) if "labels" in batch else 1.0
                total += float(self.loss_fn(self.model, batch)) * n
                count += n
        self.model.train()
        total, count = self.ctx.all_reduce_sum([total, count])
        return total / count if count else float("nan")

    def _log(self, record: dict) -> None:
        self.records.append(record)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, resume: bool = False, stop_at_step: int | None = None) -> TrainResult:
        """Train to `max_steps` (or stop early at `stop_at_step`, checkpointed, to continue later)."""
        cfg = self.cfg
        if self.checkpoint_path.is_file():
            if not resume:
                raise FileExistsError(f"{self.out} already holds a checkpoint; resume it (--resume) "
                                      "or choose another output directory")
            self.load_checkpoint()
            log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        end = min(cfg.max_steps, stop_at_step or cfg.max_steps)
        self.model.train()
        t0, tokens, skipped_in_row, skipped = time.perf_counter(), 0, 0, 0
        window: list[float] = []
        last_loss = val_loss = None
        bar = _Progress(self.progress and self.ctx.is_main, self.title, cfg.max_steps, self.step)
        try:
            with bar:
                while self.step < end:
                    lr = lr_at(self.step, cfg)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    loss_sum = 0.0
                    for micro in range(cfg.grad_accum):
                        batch = self._to_device(self.data.sample(self._generator(micro)))
                        sync = micro == cfg.grad_accum - 1 or not self.ctx.enabled
                        ctx = self.train_model.no_sync() if not sync else nullcontext()
                        with ctx, self._autocast():
                            loss = self.loss_fn(self.train_model, batch)
                        with ctx:
                            (loss / cfg.grad_accum).backward()
                        loss_sum += float(loss.detach())
                        tokens += batch["input_ids"].numel() * self.ctx.world_size
                    loss_mean = self.ctx.all_reduce_sum([loss_sum])[0] / (cfg.grad_accum * self.ctx.world_size)
                    params = [p for _, p in self.params]
                    norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
                    if not (math.isfinite(loss_mean) and math.isfinite(norm)):
                        self.optimizer.zero_grad(set_to_none=True)
                        skipped += 1
                        skipped_in_row += 1
                        log.warning("step %d skipped: loss %s, gradient norm %s", self.step, loss_mean, norm)
                        if skipped_in_row >= cfg.max_skipped_steps:
                            raise TrainingDiverged(f"{skipped_in_row} consecutive steps had a non-finite loss or "
                                                   f"gradient (last at step {self.step}); lower lr or check the data")
                        self.step += 1
                        continue
                    skipped_in_row = 0
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    last_loss = loss_mean
                    window.append(loss_mean)
                    bar.update(self.step, loss=loss_mean, lr=lr, norm=norm, val=val_loss)
                    if self.step % cfg.log_interval == 0 or self.step == end:
                        elapsed = time.perf_counter() - t0
                        self._log({"step": self.step, "loss": sum(window) / len(window), "lr": lr, "grad_norm": norm,
                                   "tokens_per_s": tokens / elapsed if elapsed else 0.0, "skipped": skipped})
                        window = []
                    if self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps:
                        val_loss = self.evaluate()
                        self._log({"step": self.step, "val_loss": val_loss, "val_ppl": _ppl(val_loss)})
                        if self.ctx.is_main:
                            plot_loss(self.records, self.out / "loss.png", self.title)
                    if self.step % cfg.ckpt_interval == 0 or self.step == end:
                        self.save_checkpoint()
                        self.ctx.barrier()
        except KeyboardInterrupt:
            self.save_checkpoint()
            log.warning("interrupted: checkpoint saved at step %d; run again with --resume to continue", self.step)
            raise
        if self.ctx.is_main and self.records:
            plot_loss(self.records, self.out / "loss.png", self.title)
        if val_loss is None:
            val_loss = next((r["val_loss"] for r in reversed(self.records) if "val_loss" in r), None)
        return TrainResult(out_dir=str(self.out), steps=self.step, tokens=tokens,
                           seconds=time.perf_counter() - t0, final_loss=last_loss, val_loss=val_loss,
                           val_ppl=_ppl(val_loss) if val_loss is not None else None, skipped_steps=skipped,
                           precision=self.precision)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class _Progress:
    """Rich progress bar with the numbers people watch (loss, lr, grad norm); silent when disabled."""

    def __init__(self, enabled: bool, title: str, total: int, start: int) -> None:
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.p.add_task(title, total=total, completed=start, info="")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.p.__exit__(*exc)

    def update(self, step: int, loss: float, lr: float, norm: float, val: float | None) -> None:
        if self.enabled:
            info = f"loss {loss:.3f}  lr {lr:.2e}  |g| {norm:.2f}" + (f"  val {val:.3f}" if val is not None else "")
            self.p.update(self.task, completed=step, info=info)


def result_json(result: TrainResult) -> str:
    return json.dumps(asdict(result), indent=2)

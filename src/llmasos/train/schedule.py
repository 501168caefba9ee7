"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD)."""

from __future__ import annotations

import math

from llmasos.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return peak * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else peak
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
    # WSD holds the peak and decays linearly over the last `decay_fraction` of training, so a run can be
    # extended from any checkpoint of the stable phase without restarting the schedule.
    decay_steps = max(1, round(cfg.max_steps * cfg.decay_fraction))
    decay_start = max(cfg.warmup_steps, cfg.max_steps - decay_steps)
    if step < decay_start:
        return peak
    progress = (step - decay_start) / max(1, cfg.max_steps - decay_start)
    return peak - (peak - floor) * min(1.0, progress)

"""Training hyper-parameters, validated at the boundary (YAML/JSON files, CLI flags, Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """One training run. Steps count optimizer updates; one update sees batch_size x grad_accum sequences."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str
    max_steps: int = Field(gt=0)
    batch_size: int = Field(8, gt=0, description="sequences per micro-batch (per process under DDP)")
    grad_accum: int = Field(1, gt=0)
    seq_len: int = Field(256, gt=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying at the end")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0 turns clipping off (the norm is still logged)")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    eval_interval: int = Field(100, gt=0)
    eval_batches: int = Field(20, gt=0)
    ckpt_interval: int = Field(100, gt=0)
    log_interval: int = Field(10, gt=0)
    max_skipped_steps: int = Field(20, gt=0, description="consecutive non-finite steps before giving up")
    seed: int = 0
    num_threads: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps and self.schedule != "constant":
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        return self


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file as a dict, with the file named in any error."""
    import json

    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such config file")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    return data

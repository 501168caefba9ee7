"""On-disk adapter format, shared by every adapter kind: `adapter_config.json` + `adapter.safetensors`.

An adapter is saved apart from its base model, so one base serves many apps' adapters. The config records
the base it was trained on (path and a fingerprint of its architecture) so loading it onto another base fails
early instead of producing noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmasos.models.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
KINDS = ("lora", "prompt_tuning", "prefix_tuning")


def config_fingerprint(cfg: ModelConfig) -> str:
    """sha256 of the base's architecture (not its weights): cheap, and identical for any dtype it is loaded in."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_adapter(out_dir: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    if config.get("adapter_type") not in KINDS:
        raise ValueError(f"adapter_type must be one of {KINDS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt", "adapter_type": config["adapter_type"]})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter directory; ValueError when it is not one."""
    d = Path(path)
    cfg_path, w_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise ValueError(f"{d} is not an adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    config = json.loads(cfg_path.read_text())
    if config.get("adapter_type") not in KINDS:
        raise ValueError(f"{cfg_path}: adapter_type {config.get('adapter_type')!r} is not one of {KINDS}")
    return config, load_file(str(w_path))


def check_shape(what: str, got: torch.Tensor, want: tuple[int, ...]) -> None:
    if tuple(got.shape) != tuple(want):
        raise ValueError(f"adapter does not fit this base model: {what} has shape {tuple(got.shape)}, "
                         f"the base needs {tuple(want)} (trained for another base?)")

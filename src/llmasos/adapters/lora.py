"""LoRA: a frozen Linear `W` plus a trained low-rank update `(alpha / r) * B @ A`.

Targets are our own module names. `qkv_proj` is the fused [q; k; v] projection and `up_proj` the fused
[gate; up] one, so a LoRA on them is one rank-r update of the fused matrix (q, k and v share A). That keeps a
target one matmul pair, and merging is still exact: the fused weight is split only when it is saved.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.adapters.format import check_shape, config_fingerprint, read_adapter, save_adapter
from llmasos.models.decoder import DecoderLM
from llmasos.train.config import TrainConfig
from llmasos.train.trainer import TrainResult

ATTENTION_TARGETS = ("qkv_proj", "o_proj")
MLP_TARGETS = ("up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError("LoRA rank r must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("LoRA dropout must be in [0, 1)")
        bad = set(self.target_modules) - set(ALL_TARGETS)
        if bad or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {ALL_TARGETS}, got {self.target_modules}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """Training-time wrapper: `base(x) + scale * B(A(dropout(x)))`; B starts at zero so training starts at the base."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / r
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does; PEFT's default too
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return self.base(x) + (delta * self.scale).to(x.dtype)


def target_linears(model: DecoderLM, targets: list[str] | tuple[str, ...]) -> dict[str, tuple[nn.Module, str]]:
    """`{"layers.0.attn.qkv_proj": (parent module, attribute)}` for every Linear named in `targets`."""
    found = {}
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            # A Linear the kernel already wrapped for serving counts as its base.
            if attr in targets and isinstance(getattr(child, "base", child), nn.Linear):
                found[f"{name}.{attr}" if name else attr] = (module, attr)
    return found


def add_lora(model: DecoderLM, cfg: LoraConfig) -> DecoderLM:
    """Freeze the base and wrap the target Linears; only the LoRA factors keep requires_grad."""
    model.requires_grad_(False)
    for parent, attr in target_linears(model, cfg.target_modules).values():
        setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.r, cfg.alpha, cfg.dropout))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def save_lora(model: DecoderLM, cfg: LoraConfig, out_dir: str | Path, base_model: str | Path | None = None) -> Path:
    config = {"adapter_type": "lora", **asdict(cfg), "base_model": str(base_model) if base_model else None,
              "base_config_sha256": config_fingerprint(model.config)}
    return save_adapter(out_dir, config, lora_state_dict(model))


def read_lora(path: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor], dict]:
    config, tensors = read_adapter(path)
    if config["adapter_type"] != "lora":
        raise ValueError(f"{path} holds a {config['adapter_type']} adapter, not LoRA")
    cfg = LoraConfig(r=config["r"], alpha=config["alpha"], dropout=config.get("dropout", 0.0),
                     target_modules=list(config["target_modules"]))
    return cfg, tensors, config


def check_lora_fits(model: DecoderLM, cfg: LoraConfig, tensors: dict[str, torch.Tensor]) -> dict[str, nn.Linear]:
    """The base Linears the adapter's factors belong to; ValueError when names or shapes do not fit."""
    targets = {n: getattr(p, a) for n, (p, a) in target_linears(model, cfg.target_modules).items()}
    names = {k.rsplit(".", 1)[0] for k in tensors}
    if names != set(targets):
        extra = sorted(names ^ set(targets))[:3]
        raise ValueError(f"adapter does not fit this base model: modules differ (e.g. {extra})")
    for name, lin in targets.items():
        lin = getattr(lin, "base", lin)
        check_shape(f"{name}.lora_A", tensors[f"{name}.lora_A"], (cfg.r, lin.in_features))
        check_shape(f"{name}.lora_B", tensors[f"{name}.lora_B"], (lin.out_features, cfg.r))
    return targets


def apply_lora(model: DecoderLM, path: str | Path) -> DecoderLM:
    """Wrap `model` with the saved adapter (to evaluate it densely or keep training it)."""
    cfg, tensors, _ = read_lora(path)
    check_lora_fits(model, cfg, tensors)
    add_lora(model, cfg)
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.lora_A.copy_(tensors[f"{name}.lora_A"])
            m.lora_B.copy_(tensors[f"{name}.lora_B"])
    return model


def merge_lora(model: DecoderLM) -> DecoderLM:
    """Fold every LoRA into its base weight (W += scale * B @ A) and unwrap: a plain model, no extra cost."""
    for name, m in lora_modules(model).items():
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        with torch.no_grad():
            m.base.weight += m.delta_weight().to(m.base.weight.dtype)
        setattr(parent, name.rsplit(".", 1)[-1], m.base)
    return model


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + LoRA as a full Hugging Face model directory (in the base's dtype)."""
    from llmasos.kernel.llm import load_tokenizer
    from llmasos.models.hf_format import save_hf_checkpoint
    from llmasos.models.loader import DTYPES, load_model, read_hf_config

    model, model_dir = load_model(base_model, dtype="float32")  # merge in fp32, round once at the end
    merge_lora(apply_lora(model, adapter_dir))
    hf = read_hf_config(model_dir)
    dtype = DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype")), torch.float32)
    return save_hf_checkpoint(model, hf, out_dir, tokenizer=load_tokenizer(model_dir), dtype=dtype)


def train_lora(base_model: str | Path, data: str | Path, cfg: LoraConfig, train: TrainConfig,
               resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a LoRA on a frozen base; the adapter lands in `train.out_dir` beside the trainer's checkpoint."""
    from llmasos.adapters.train import build_batches, fit, load_base

    model, model_dir, tokenizer = load_base(base_model)
    add_lora(model, cfg)
    batches = build_batches(data, tokenizer, train, model.config.max_position)
    model.train()
    return fit(model, batches, train, lambda: save_lora(model, cfg, train.out_dir, model_dir), "LoRA",
               resume, progress)

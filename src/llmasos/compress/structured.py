"""Structured pruning: remove whole attention KV groups and FFN channels, and rebuild smaller layers.

Units removed:
- a **KV group**: one key/value head and the `num_heads / num_kv_heads` query heads that read it (under GQA a
  query head cannot outlive its KV head, and keeping the ratio keeps the config expressible);
- an **FFN channel** c: row c of gate and of up (the fused `up_proj` holds [gate; up], 2 * intermediate rows)
  and column c of `down_proj`.

Scores are activation-weighted magnitudes on calibration data, taken where the unit's output enters the
residual stream: channel j of `o_proj`'s input (a head dimension) scores ||X_j||_2 * ||W_o[:, j]||_2, a group
sums its heads' channels; FFN channel c scores ||X_c||_2 * ||W_down[:, c]||_2 (X = silu(gate) * up).

A Hugging Face config has one head count and one intermediate size for all layers, so every layer keeps the
same number of groups and channels (each layer its own best ones). `head_dim` is written explicitly, as
hidden_size / num_heads no longer gives it. The result is a normal HF checkpoint; fewer rows and columns make
every decode step read fewer bytes, which is where CPU decode time goes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from llmasos.compress.common import check_fraction
from llmasos.compress.prune import collect_input_norms
from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM


@dataclass
class StructuredPlan:
    kv_keep: list[torch.Tensor]  # per layer: sorted kept KV-group indices (all layers the same count)
    ffn_keep: list[torch.Tensor]  # per layer: sorted kept FFN channel indices

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_keep[0])

    @property
    def intermediate_size(self) -> int:
        return len(self.ffn_keep[0])


def keep_counts(cfg: ModelConfig, heads_keep_ratio: float, ffn_keep_ratio: float) -> tuple[int, int]:
    """KV groups and FFN channels each layer keeps; ValueError when a ratio would leave nothing."""
    for name, r in (("heads_keep_ratio", heads_keep_ratio), ("ffn_keep_ratio", ffn_keep_ratio)):
        check_fraction(name, r, allow_one=True)
    kv = round(cfg.num_kv_heads * heads_keep_ratio)
    ffn = round(cfg.intermediate_size * ffn_keep_ratio)
    if kv < 1:
        raise ValueError(f"heads_keep_ratio {heads_keep_ratio} keeps 0 of {cfg.num_kv_heads} KV head groups; "
                         f"the smallest ratio that keeps one is {0.5 / cfg.num_kv_heads + 1e-9:.3g}")
    if ffn < 1:
        raise ValueError(f"ffn_keep_ratio {ffn_keep_ratio} keeps 0 of {cfg.intermediate_size} FFN channels")
    if kv < cfg.num_kv_heads and cfg.family == "gpt2":
        raise ValueError("GPT-2 configs derive head_dim from n_embd / n_head, so heads cannot be removed; "
                         "use heads_keep_ratio 1.0 (FFN channels can still be pruned)")
    return kv, ffn


@torch.no_grad()
def structured_scores(model: DecoderLM, calib: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: scores of the KV groups `[num_kv_heads]` and of the FFN channels `[intermediate]`."""
    cfg = model.config
    names = [f"layers.{i}.{n}" for i in range(cfg.num_layers) for n in ("attn.o_proj", "mlp.down_proj")]
    norms = collect_input_norms(model, calib, names)
    heads, ffn = [], []
    for i, layer in enumerate(model.layers):
        o = norms[f"layers.{i}.attn.o_proj"] * layer.attn.o_proj.weight.float().norm(dim=0)
        heads.append(o.view(cfg.num_kv_heads, -1).sum(1))  # q heads are laid out group by group
        ffn.append(norms[f"layers.{i}.mlp.down_proj"] * layer.mlp.down_proj.weight.float().norm(dim=0))
    return heads, ffn


def make_plan(head_scores: list[torch.Tensor], ffn_scores: list[torch.Tensor], num_kv: int, num_ffn: int,
              ) -> StructuredPlan:
    def top(s: torch.Tensor, k: int) -> torch.Tensor:
        return torch.sort(torch.topk(s, k).indices).values

    return StructuredPlan([top(s, num_kv) for s in head_scores], [top(s, num_ffn) for s in ffn_scores])


def _rows(cfg: ModelConfig, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the q rows (= o_proj columns) and of the k (or v) rows of the kept KV groups."""
    d, rep = cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
    q = torch.cat([torch.arange(g * rep * d, (g + 1) * rep * d) for g in groups.tolist()])
    kv = torch.cat([torch.arange(g * d, (g + 1) * d) for g in groups.tolist()])
    return q, kv


def pruned_hf_config(hf: dict[str, Any], cfg: ModelConfig, plan: StructuredPlan) -> dict[str, Any]:
    out = copy.deepcopy(hf)
    rep = cfg.num_heads // cfg.num_kv_heads
    if cfg.family == "gpt2":
        out["n_inner"] = plan.intermediate_size
        return out
    out["num_attention_heads"] = plan.num_kv_heads * rep
    out["num_key_value_heads"] = plan.num_kv_heads
    out["head_dim"] = cfg.head_dim
    out["intermediate_size"] = plan.intermediate_size
    return out


@torch.no_grad()
def rebuild(model: DecoderLM, hf: dict[str, Any], plan: StructuredPlan) -> tuple[DecoderLM, dict[str, Any]]:
    """A new, smaller fp32 model holding only the kept groups and channels, and its HF config."""
    cfg = model.config
    new_hf = pruned_hf_config(hf, cfg, plan)
    new_cfg = ModelConfig.from_hf(new_hf)
    small = DecoderLM(new_cfg).to(model.embed_tokens.weight.dtype)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("rope.")}
    q_size, kv_size, inner = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        q, kv = _rows(cfg, plan.kv_keep[i])
        qkv_rows = torch.cat([q, q_size + kv, q_size + kv_size + kv])
        for s in ("weight", "bias"):
            if f"{p}attn.qkv_proj.{s}" in state:
                state[f"{p}attn.qkv_proj.{s}"] = state[f"{p}attn.qkv_proj.{s}"][qkv_rows]
        state[f"{p}attn.o_proj.weight"] = state[f"{p}attn.o_proj.weight"][:, q]
        c = plan.ffn_keep[i]
        up_rows = torch.cat([c, inner + c]) if cfg.gated_mlp else c
        for s in ("weight", "bias"):
            if f"{p}mlp.up_proj.{s}" in state:
                state[f"{p}mlp.up_proj.{s}"] = state[f"{p}mlp.up_proj.{s}"][up_rows]
        state[f"{p}mlp.down_proj.weight"] = state[f"{p}mlp.down_proj.weight"][:, c]
    small.load_state_dict(state, strict=False)  # strict=False: only the rope buffers are not in `state`
    return small.train(model.training), new_hf


@torch.no_grad()
def mask_in_place(model: DecoderLM, plan: StructuredPlan) -> DecoderLM:
    """The reference: zero the pruned heads' o_proj columns and the pruned channels' down_proj columns of the
    original model. Their contributions vanish, so its logits must equal the rebuilt model's."""
    cfg = model.config
    for i, layer in enumerate(model.layers):
        q, _ = _rows(cfg, plan.kv_keep[i])
        keep_q = torch.zeros(cfg.num_heads * cfg.head_dim, dtype=torch.bool)
        keep_q[q] = True
        layer.attn.o_proj.weight[:, ~keep_q] = 0
        keep_c = torch.zeros(cfg.intermediate_size, dtype=torch.bool)
        keep_c[plan.ffn_keep[i]] = True
        layer.mlp.down_proj.weight[:, ~keep_c] = 0
    return model


def prune_structured(model: DecoderLM, hf: dict[str, Any], calib: list[torch.Tensor], heads_keep_ratio: float,
                     ffn_keep_ratio: float) -> tuple[DecoderLM, dict[str, Any], StructuredPlan]:
    """Score on `calib`, keep the same number of the best KV groups / FFN channels in every layer, rebuild."""
    num_kv, num_ffn = keep_counts(model.config, heads_keep_ratio, ffn_keep_ratio)
    heads, ffn = structured_scores(model, calib)
    plan = make_plan(heads, ffn, num_kv, num_ffn)
    small, new_hf = rebuild(model, hf, plan)
    return small, new_hf, plan

"""Unstructured pruning for quality studies: weights are zeroed, shapes stay (no speed-up by itself).

- **magnitude**: score |W|;
- **Wanda** (Sun et al., 2023): score |W_ij| * ||X_j||_2, the weight times the L2 norm of input channel j over
  every calibration token. A small weight on a channel that carries large activations still matters, which
  is what plain magnitude misses in LLMs with outlier features.

Both compare weights within each output row (Wanda's comparison group; it also keeps every output neuron
alive) and zero exactly `int(sparsity * in_features)` per row of every block linear layer. Embeddings, norms
and the LM head are left dense. Activations are collected in one pass over the dense model (the paper's code
re-collects layer by layer on the partly pruned model; for the small sparsities studied the difference is
small, and one pass keeps calibration to a single forward).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from llmasos.compress.common import block_linears, check_fraction
from llmasos.models.decoder import DecoderLM

METHODS = ("magnitude", "wanda", "structured")


@contextmanager
def input_norms(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward adds each module's squared inputs per channel; on exit the dict holds
    the L2 norm of every input channel over all tokens seen."""
    sq: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def fn(_mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().flatten(0, -2)
            s = (x * x).sum(0)
            sq[name] = sq[name] + s if name in sq else s
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    out: dict[str, torch.Tensor] = {}
    try:
        yield out
        out.update({n: s.sqrt().float() for n, s in sq.items()})
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_input_norms(model: DecoderLM, batches: Iterable[torch.Tensor], names: list[str] | None = None,
                        ) -> dict[str, torch.Tensor]:
    """||X_j||_2 per input channel of the named block linears (all of them by default) on calibration ids."""
    mods = block_linears(model)
    if names is not None:
        mods = {n: mods[n] for n in names}
    was = model.training
    model.eval()
    try:
        with input_norms(mods) as norms:
            for ids in batches:
                model(ids)
    finally:
        model.train(was)
    return norms


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2: weight `[out, in]`, x_norm `[in]`."""
    return weight.detach().abs().float() * x_norm.float().unsqueeze(0)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing the `int(sparsity * in)` lowest-scoring weights of every row."""
    k = int(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        # stable sort: ties (e.g. exact zeros) are broken by column index, the same way every run
        idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, idx, False)
    return keep


@torch.no_grad()
def prune_unstructured(model: DecoderLM, method: str, sparsity: float,
                       calib: Iterable[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Zero weights of every block linear in place; returns the keep-masks by module name."""
    if method not in ("magnitude", "wanda"):
        raise ValueError(f"unknown unstructured pruning method {method!r}; choose magnitude or wanda")
    check_fraction("sparsity", sparsity, allow_one=False)
    mods = block_linears(model)
    norms = {}
    if method == "wanda":
        if calib is None:
            raise ValueError("wanda needs calibration data")
        norms = collect_input_norms(model, calib)
    masks = {}
    for name, mod in mods.items():
        scores = wanda_scores(mod.weight, norms[name]) if method == "wanda" else magnitude_scores(mod.weight)
        masks[name] = row_mask(scores, sparsity)
        mod.weight.mul_(masks[name].to(mod.weight.dtype))
    return masks


def keep_masks_during_training(model: DecoderLM, masks: dict[str, torch.Tensor]) -> list:
    """Gradient hooks that keep pruned weights at exactly zero through fine-tuning: their gradient is zeroed,
    so AdamW's moments stay 0 and its (decoupled) weight decay of a 0 is 0. Returns the hook handles."""
    mods = block_linears(model)
    return [mods[n].weight.register_hook(lambda g, m=m: g * m.to(g.device, g.dtype)) for n, m in masks.items()]

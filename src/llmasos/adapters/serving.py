"""Serving adapters per request: one base model, many apps' adapters, mixed in one batch.

The model runner tells the manager, before each forward pass, which rows of the flattened step belong to which
adapter and at which positions (`begin_step`). Then:
- LoRA: each wrapped Linear adds `scale * B(A(x))` to the rows of each adapter it holds (gather, two small
  matmuls, scatter-add); rows of other adapters and of no adapter see the plain base;
- prompt tuning: a sequence starts with N placeholder tokens; the rows at positions < N get the adapter's
  virtual token embeddings instead of the placeholder's (the decoder's `embed_hook`);
- prefix tuning: likewise P placeholder tokens, whose K/V are overwritten with the adapter's prefix in every
  layer before they are written to the cache (the attention's `kv_hook`).
Nothing is wrapped or hooked until the first adapter is loaded, so an engine without adapters runs unchanged.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.adapters.format import config_fingerprint, read_adapter
from llmasos.models.decoder import DecoderLM

PLACEHOLDER_TOKEN = 0  # token id of virtual-token slots; its embedding / K/V are always replaced
StepRows = dict[str, tuple[list[int], list[int]]]  # adapter -> (rows in the step, their positions)


class MultiLoRALinear(nn.Module):
    """A base Linear plus any number of LoRAs, each applied to the rows of its own requests only."""

    def __init__(self, base: nn.Linear, manager: AdapterManager) -> None:
        super().__init__()
        self.base = base
        self.manager = manager
        self.loras: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for name, rows in self.manager.lora_rows:
            lora = self.loras.get(name)
            if lora is not None:
                a, b, scale = lora
                y.index_add_(0, rows, F.linear(F.linear(x.index_select(0, rows), a), b), alpha=scale)
        return y


class AdapterManager:
    def __init__(self, model: DecoderLM) -> None:
        self.model = model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.kinds: dict[str, str] = {}
        self.paths: dict[str, str] = {}
        self.prompts: dict[str, torch.Tensor] = {}  # [N, hidden], learned position embeddings already added
        self.prefixes: dict[str, torch.Tensor] = {}  # [layers, 2, P, kv_heads, head_dim]
        self.lora_rows: list[tuple[str, torch.Tensor]] = []
        self._embed_edit: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kv_edit: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hooked = False

    def __contains__(self, name: object) -> bool:
        return name in self.kinds

    @property
    def names(self) -> list[str]:
        return sorted(self.kinds)

    def num_virtual_tokens(self, name: str) -> int:
        """Placeholder tokens a request for this adapter starts with (0 for LoRA)."""
        if name in self.prompts:
            return self.prompts[name].shape[0]
        if name in self.prefixes:
            return self.prefixes[name].shape[2]
        return 0

    # -- loading ----------------------------------------------------------------------------------------
    def load(self, name: str, path: str | Path) -> str:
        """Load an adapter directory under `name`; returns its kind. ValueError if it does not fit the base."""
        if not isinstance(name, str) or not name:
            raise ValueError("adapter name must be a non-empty string")
        if name in self.kinds:
            # Cached KV blocks are keyed by the name: new weights under an old name would reuse stale blocks.
            raise ValueError(f"an adapter named {name!r} is already loaded")
        config, tensors = read_adapter(path)
        if config.get("base_config_sha256") not in (None, config_fingerprint(self.model.config)):
            warnings.warn(f"adapter {path} was trained on a base with another config; loading it anyway",
                          stacklevel=2)
        kind = config["adapter_type"]
        if kind == "lora":
            self._load_lora(name, path)
        elif kind == "prompt_tuning":
            from llmasos.adapters.prompt_tuning import read_prompt_embeddings

            emb = read_prompt_embeddings(path, self.model).to(self.device, torch.float32)
            if self.model.embed_positions is not None:
                emb = emb + self.model.embed_positions.weight[: emb.shape[0]].float()
            self._install_hooks()
            self.prompts[name] = emb.to(self.dtype)
        else:
            from llmasos.adapters.prefix_tuning import read_prefix_kv

            self._install_hooks()
            self.prefixes[name] = read_prefix_kv(path, self.model).to(self.device, self.dtype)
        self.kinds[name], self.paths[name] = kind, str(path)
        self.model.reset_fast_paths()  # wrapped modules and hooks: the straight-line decode no longer applies
        return kind

    def _load_lora(self, name: str, path: str | Path) -> None:
        from llmasos.adapters.lora import check_lora_fits, read_lora

        cfg, tensors, _ = read_lora(path)
        targets = check_lora_fits(self.model, cfg, tensors)  # all checks before any module changes
        for mod_name, lin in targets.items():
            if not isinstance(lin, MultiLoRALinear):
                parent = self.model.get_submodule(mod_name.rsplit(".", 1)[0])
                lin = MultiLoRALinear(lin, self)
                setattr(parent, mod_name.rsplit(".", 1)[1], lin)
            a = tensors[f"{mod_name}.lora_A"].to(self.device, self.dtype)
            b = tensors[f"{mod_name}.lora_B"].to(self.device, self.dtype)
            lin.loras[name] = (a, b, cfg.scale)

    def _install_hooks(self) -> None:
        if self._hooked:
            return
        self.model.embed_hook = self._embed_hook
        for i, layer in enumerate(self.model.layers):
            layer.attn.kv_hook = functools.partial(self._kv_hook, i)
        self._hooked = True

    # -- per step ---------------------------------------------------------------------------------------
    def begin_step(self, rows: StepRows) -> None:
        dev = self.device
        self.lora_rows = []
        e_rows, e_vals, k_rows, k_vals = [], [], [], []
        for name, (r, pos) in rows.items():
            kind = self.kinds[name]
            if kind == "lora":
                self.lora_rows.append((name, torch.tensor(r, dtype=torch.long, device=dev)))
                continue
            n = self.num_virtual_tokens(name)
            virt = [(row, p) for row, p in zip(r, pos, strict=True) if p < n]
            if not virt:
                continue
            vr = torch.tensor([row for row, _ in virt], dtype=torch.long, device=dev)
            vp = torch.tensor([p for _, p in virt], dtype=torch.long, device=dev)
            if kind == "prompt_tuning":
                e_rows.append(vr)
                e_vals.append(self.prompts[name][vp])
            else:
                k_rows.append(vr)
                k_vals.append(self.prefixes[name][:, :, vp])  # [L, 2, n, Hkv, D]
        self._embed_edit = (torch.cat(e_rows), torch.cat(e_vals)) if e_rows else None
        self._kv_edit = (torch.cat(k_rows), torch.cat(k_vals, dim=2)) if k_rows else None

    def end_step(self) -> None:
        self.lora_rows, self._embed_edit, self._kv_edit = [], None, None

    def _embed_hook(self, x: torch.Tensor) -> torch.Tensor:
        if self._embed_edit is None:
            return x
        rows, vals = self._embed_edit
        return x.index_copy(0, rows, vals.to(x.dtype))

    def _kv_hook(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kv_edit is None:
            return k, v
        rows, vals = self._kv_edit
        return k.index_copy(0, rows, vals[layer, 0].to(k.dtype)), v.index_copy(0, rows, vals[layer, 1].to(v.dtype))

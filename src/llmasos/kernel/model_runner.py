"""Owns the model and its paged KV cache; turns a scheduled step into one forward pass."""

from __future__ import annotations

import os
from typing import Any

import torch

from llmasos.kernel.scheduler import SchedulerOutput
from llmasos.kernel.sequence import Sequence
from llmasos.models.attention import AttentionMetadata, PrefillChunk
from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM
from llmasos.ops.cpu_kernels import prepack_linears, prepack_size
from llmasos.ops.quant_linear import QuantLinear


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


def auto_kv_cache_bytes(device: torch.device) -> int:
    """Default KV budget: 80% of free GPU memory, or a fifth of available RAM (at most 4 GiB) on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    return int(min(available_ram() * 0.2, 4 << 30))


def available_ram() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def prepack_weights(model: DecoderLM, setting: bool | None) -> int:
    """Apply EngineConfig.prepack_weights; returns the bytes the prepacked copies take (0 if none)."""
    if setting is False:
        return 0
    if setting is None:
        extra = prepack_size(model)
        if extra == 0 or extra > available_ram() // 4:
            # The bf16 copies do not fit; int4 layers' interleaved copies (the int4 bytes again, for one-row
            # steps) still may.
            small = sum(m.interleave_size() for m in model.modules() if isinstance(m, QuantLinear))
            if 0 < small <= available_ram() // 4:
                return sum(m.interleave() for m in model.modules() if isinstance(m, QuantLinear))
            return 0
    return prepack_linears(model)


class ModelRunner:
    def __init__(self, model: DecoderLM, num_blocks: int, block_size: int) -> None:
        self.model = model
        cfg = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.adapters: Any = None  # an adapters.serving.AdapterManager once the engine loads an adapter
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        # Every slot is written before it is read, so the pool is not zeroed: on CPU an untouched page costs
        # nothing, while zeroing a default 4 GiB pool took ~4 s of every start-up.
        alloc = torch.empty if self.device.type == "cpu" else torch.zeros
        self.kv_caches = [
            (alloc(shape, dtype=self.dtype, device=self.device), alloc(shape, dtype=self.dtype, device=self.device))
            for _ in range(cfg.num_layers)
        ]

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k, v in self.kv_caches:
            k[dst] = k[src]
            v[dst] = v[src]

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Run the step's forward pass. Returns logits for the sequences that now need a next token."""
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        to_sample: list[Sequence] = []
        dev = self.device
        for seq in step.decodes:
            p = seq.num_computed_tokens
            sample_rows.append(len(ids))
            to_sample.append(seq)
            ids.append(seq.token_ids[p])
            pos.append(p)
            slots += self._slots(seq, p, p + 1)
        meta = AttentionMetadata(slot_mapping=torch.empty(0), block_size=self.block_size, num_decodes=len(step.decodes))
        if step.decodes:
            width = max(len(s.block_table) for s in step.decodes)
            tables = [s.block_table + [0] * (width - len(s.block_table)) for s in step.decodes]
            meta.decode_block_tables = torch.tensor(tables, dtype=torch.long, device=dev)
            lens = [s.num_computed_tokens + 1 for s in step.decodes]
            meta.decode_context_lens = torch.tensor(lens, dtype=torch.long, device=dev)
            meta.decode_max_len = max(lens)
        for seq, n in step.prefills:
            start = seq.num_computed_tokens
            meta.prefills.append(PrefillChunk(
                start=len(ids), length=n, context_len=start + n,
                block_table=torch.tensor(seq.block_table, dtype=torch.long, device=dev)))
            ids += seq.token_ids[start : start + n]
            pos += range(start, start + n)
            slots += self._slots(seq, start, start + n)
            if start + n == len(seq.token_ids):
                sample_rows.append(len(ids) - 1)
                to_sample.append(seq)
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev)
        if self.adapters is not None:
            self.adapters.begin_step(_adapter_rows(step))
        try:
            hidden = self.model.forward_paged(
                torch.tensor(ids, dtype=torch.long, device=dev),
                torch.tensor(pos, dtype=torch.long, device=dev),
                meta,
                self.kv_caches,
            )
        finally:
            if self.adapters is not None:
                self.adapters.end_step()
        if not sample_rows:
            return None, []
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=dev)])
        return logits, to_sample


def _adapter_rows(step: SchedulerOutput) -> dict[str, tuple[list[int], list[int]]]:
    """Adapter -> (rows of the flattened step, their positions), in the order `execute` lays the rows out."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    row = 0
    for seq in step.decodes:
        if seq.adapter is not None:
            rows, pos = out.setdefault(seq.adapter, ([], []))
            rows.append(row)
            pos.append(seq.num_computed_tokens)
        row += 1
    for seq, n in step.prefills:
        if seq.adapter is not None:
            rows, pos = out.setdefault(seq.adapter, ([], []))
            rows += range(row, row + n)
            pos += range(seq.num_computed_tokens, seq.num_computed_tokens + n)
        row += n
    return out

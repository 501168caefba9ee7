"""The `llmasos compress prune` job: load, calibrate, prune (unstructured or structured), optionally recover
with a short fine-tune on the Trainer, write a Hugging Face directory, and report the figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmasos.compress.common import (
    RunSettings,
    block_sparsity,
    calibration_batches,
    check_fraction,
    clamp_seq_len,
    count_nonzero,
    count_params,
    eval_ppl,
    load_fp32,
    load_tokenizer,
    source_dtype,
    token_windows,
)
from llmasos.compress.prune import METHODS, keep_masks_during_training, prune_unstructured
from llmasos.compress.structured import prune_structured
from llmasos.models.hf_format import save_hf_checkpoint


@dataclass
class PruneReport:
    out_dir: str
    method: str
    params_before: int
    params_after: int
    nonzero_after: int
    block_sparsity: float  # zeros among the block linear weights (unstructured methods)
    ppl_before: float
    ppl_pruned: float
    ppl_recovered: float | None
    num_kv_heads: tuple[int, int] | None = None  # (before, after), structured only
    intermediate_size: tuple[int, int] | None = None


def validate(method: str, sparsity: float, heads_keep_ratio: float | None, ffn_keep_ratio: float | None,
             ) -> tuple[float, float]:
    """Check the arguments before any loading; returns the structured keep ratios (default 1 - sparsity)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    check_fraction("sparsity", sparsity, allow_one=False)
    heads = 1.0 - sparsity if heads_keep_ratio is None else heads_keep_ratio
    ffn = 1.0 - sparsity if ffn_keep_ratio is None else ffn_keep_ratio
    check_fraction("heads_keep_ratio", heads, allow_one=True)
    check_fraction("ffn_keep_ratio", ffn, allow_one=True)
    return heads, ffn


def prune(model_path: str | Path, method: str, calib_dir: str | Path, out_dir: str | Path, sparsity: float = 0.5,
          heads_keep_ratio: float | None = None, ffn_keep_ratio: float | None = None, recover_steps: int = 0,
          run: RunSettings | None = None, calib_samples: int = 32, eval_windows: int = 32,
          progress: bool = False) -> PruneReport:
    """Prune `model_path` with calibration (and recovery) data from the prepared dataset `calib_dir`."""
    from llmasos.train.pretrain import LMBatches
    from llmasos.train.trainer import Trainer

    heads, ffn = validate(method, sparsity, heads_keep_ratio, ffn_keep_ratio)
    model, hf, src_dir = load_fp32(model_path)
    run = clamp_seq_len(run or RunSettings(), model.config.max_position, calib_dir)
    calib = calibration_batches(calib_dir, calib_samples, run.seq_len)
    val = token_windows(calib_dir, "val", run.seq_len, eval_windows)
    params_before, ppl_before = count_params(model), eval_ppl(model, val)
    before_cfg = model.config
    masks = None
    if method == "structured":
        model, hf, plan = prune_structured(model, hf, calib, heads, ffn)
    else:
        masks = prune_unstructured(model, method, sparsity, calib)
    ppl_pruned, ppl_recovered = eval_ppl(model, val), None
    out = Path(out_dir)
    if recover_steps > 0:
        run.steps = recover_steps
        model.train()
        handles = keep_masks_during_training(model, masks) if masks else []
        trainer = Trainer(model, run.train_config(out / "run"), LMBatches(calib_dir, run.batch_size, run.seq_len),
                          progress=progress, title="recovering", extra_state={"hf_config": hf})
        trainer.fit()
        for h in handles:
            h.remove()
        model.cpu().eval()
        ppl_recovered = eval_ppl(model, val)
    save_hf_checkpoint(model, hf, out, tokenizer=load_tokenizer(src_dir), dtype=source_dtype(hf))
    structured = method == "structured"
    return PruneReport(
        out_dir=str(out), method=method, params_before=params_before, params_after=count_params(model),
        nonzero_after=count_nonzero(model), block_sparsity=block_sparsity(model), ppl_before=ppl_before,
        ppl_pruned=ppl_pruned, ppl_recovered=ppl_recovered,
        num_kv_heads=(before_cfg.num_kv_heads, model.config.num_kv_heads) if structured else None,
        intermediate_size=(before_cfg.intermediate_size, model.config.intermediate_size) if structured else None)

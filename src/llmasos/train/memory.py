"""Will a training run fit? Checked before anything big is allocated, so the answer is an error, not an OOM kill."""

from __future__ import annotations

from pathlib import Path

import torch


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation can use now: free GPU memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown platform: don't block


def training_memory(num_params: int, trainable_params: int, micro_batch: int, seq_len: int, hidden: int,
                    layers: int, vocab: int) -> dict[str, int]:
    """Rough bytes for fp32 weights, grads, AdamW moments and activations (kept for backward) of one micro-batch."""
    tokens = micro_batch * seq_len
    # ~16 hidden-sized fp32 tensors per layer survive to backward (norms, q/k/v, attention out, 4x-wide MLP);
    # the logits are held as fp32 three times over (logits, log-softmax, its gradient).
    activations = tokens * (layers * hidden * 16 * 4 + vocab * 4 * 3)
    return {"weights": num_params * 4, "gradients": trainable_params * 4, "optimizer": trainable_params * 8,
            "activations": activations}


def check_fits(estimate: dict[str, int], device: torch.device, what: str = "this run") -> None:
    need, have = sum(estimate.values()), available_memory(device)
    if need > 0.9 * have:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in estimate.items())
        raise MemoryError(f"{what} needs about {need / 2**30:.1f} GiB ({parts} GiB) but only "
                          f"{have / 2**30:.1f} GiB is available on {device}; lower batch_size or seq_len "
                          "(use grad_accum to keep the effective batch), or pick a smaller model")

"""Linear layers for CPU inference: a bf16 kernel for small batches, compiled on first use.

PyTorch's oneDNN bf16 matmul spends a fixed ~8 ms per 1024x6144 weight on this class of CPU whatever the
batch size, so a decode step (a few rows times every weight) runs far below memory bandwidth. Where the CPU
has AVX512-BF16 and a C++ compiler is available, small-batch bf16 matmuls go to our own kernel
(`csrc/cpu_kernels.cpp`); everything else, and any machine where the build fails, uses `F.linear`.
Set LLMASOS_NATIVE_KERNELS=0 to turn the kernel off.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Up to this many rows the kernel beats oneDNN on the machines we measured (benchmarks/bench_linear.py).
MAX_ROWS = 4


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def load_cpu_extension(name: str, source: str, fallback: str):  # noqa: ANN201 - extension module or None
    """Compile `csrc/<source>` for AVX512-BF16 CPUs on first use; None (and one warning) where that can't be done.

    Shared by every native kernel module so they obey the same switch (LLMASOS_NATIVE_KERNELS=0), CPU check and
    compiler flags, and all fall back to torch instead of failing inference.
    """
    if os.environ.get("LLMASOS_NATIVE_KERNELS", "1") == "0" or not _cpu_has_avx512_bf16():
        return None
    try:
        from torch.utils.cpp_extension import load

        src = Path(__file__).with_name("csrc") / source
        return load(
            name=name,
            sources=[str(src)],
            extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, odd toolchain: fall back, never fail inference
        log.warning("%s: %s", fallback, exc)
        return None


@cache
def native_kernels():  # noqa: ANN201 - returns the compiled extension module or None
    return load_cpu_extension("llmasos_cpu_kernels", "cpu_kernels.cpp",
                              "native bf16 kernel unavailable, using torch's matmul")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if (
        x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.numel() // x.shape[-1] <= MAX_ROWS
    ):
        ext = native_kernels()
        if ext is not None:
            out = ext.bf16_linear(x.reshape(-1, x.shape[-1]), weight, bias)
            return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """`nn.Linear` whose inference forward picks the fastest kernel for the shape at hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

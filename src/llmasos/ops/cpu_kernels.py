"""Linear layers for CPU inference: the fastest bf16 matmul for each batch size.

- Up to `MAX_ROWS` rows (decoding a few streams): our own kernel (`csrc/cpu_kernels.cpp`, compiled on first
  use where the CPU has AVX512-BF16), which streams the weights at memory bandwidth. PyTorch's oneDNN
  matmul reaches about half of that at batch 1 on the machines we measured.
- More rows: oneDNN. PyTorch re-lays a plain weight out for oneDNN on every call, which costs 15-40% at
  batch 8-64 (a batched decode step); `prepack_linears` does that once per weight for inference engines
  (a second, oneDNN-blocked copy of each weight: it costs memory, hence opt-in per model).

Set LLMASOS_NATIVE_KERNELS=0 to turn our kernel off; any machine where the build fails uses `F.linear`.
"""

from __future__ import annotations

import logging
import os
import time
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Up to this many rows the kernel beats oneDNN on the machines we measured (benchmarks/bench_linear.py).
MAX_ROWS = 4


def _cpu_has_avx512_bf16() -> bool:
    """AVX512-BF16 (and VNNI, which every CPU with it has: Cooper Lake and later, Zen 4 and later)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags and "avx512_vnni" in flags


def load_cpu_extension(name: str, sources: list[str], fallback: str):  # noqa: ANN201 - extension module or None
    """Compile `csrc/<sources>` into one module for AVX512-BF16 CPUs on first use; None (and one warning) where
    that can't be done.

    Shared by every native kernel module so they obey the same switch (LLMASOS_NATIVE_KERNELS=0), CPU check and
    compiler flags, and all fall back to torch instead of failing inference.
    """
    if os.environ.get("LLMASOS_NATIVE_KERNELS", "1") == "0" or not _cpu_has_avx512_bf16():
        return None
    try:
        from torch.utils.cpp_extension import load

        csrc = Path(__file__).with_name("csrc")
        return load(
            name=name,
            build_directory=str(_build_dir(name, csrc)),
            sources=[str(csrc / s) for s in sources],
            extra_include_paths=[str(csrc)],
            extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni", "-mf16c", "-mfma", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, odd toolchain: fall back, never fail inference
        log.warning("%s: %s", fallback, exc)
        return None


STALE_LOCK_S = 900  # a build takes about 2 minutes; a lock this old was left by a killed process


def _build_dir(name: str, csrc: Path) -> Path:
    """One build directory per checkout: two checkouts of the same sources in one cache would rebuild in turn
    (their paths differ in the build file), each waiting on the other's lock. A lock left behind by a process
    killed mid-build would make every later load wait forever: it is removed once it is clearly stale."""
    import hashlib

    from torch.utils.cpp_extension import get_default_build_root

    d = Path(get_default_build_root()) / f"{name}-{hashlib.sha1(str(csrc.resolve()).encode()).hexdigest()[:10]}"
    d.mkdir(parents=True, exist_ok=True)
    lock = d / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            log.warning("removing a stale build lock %s", lock)
            lock.unlink()
    except OSError:
        pass
    return d


@cache
def native_kernels():  # noqa: ANN201 - returns the compiled extension module or None
    # One module for every kernel, so the one-call decode step can run quantized layers too.
    ext = load_cpu_extension("llmasos_cpu_kernels",
                             ["cpu_kernels.cpp", "quant_kernels.cpp", "vnni_kernels.cpp", "decode_step.cpp"],
                             "native kernels unavailable, using torch's ops")
    if ext is not None:
        # int8/int4 layers quantize their input rows to int8 (per 32 inputs, as llama.cpp does) for the VNNI
        # kernels; LLMASOS_INT8_ACTIVATIONS=0 keeps bf16 inputs (exact activations, slower).
        ext.set_int8_activations(os.environ.get("LLMASOS_INT8_ACTIVATIONS", "1") != "0")
    return ext


def bf16_inference(*tensors: torch.Tensor) -> bool:
    """True where our fast paths apply: bf16 CPU tensors with autograd off (training keeps torch's
    differentiable ops)."""
    return not torch.is_grad_enabled() and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors)


def native_bf16(*tensors: torch.Tensor):  # noqa: ANN201 - the extension module or None
    """The native kernels, if they exist and apply to these tensors (`bf16_inference`)."""
    return native_kernels() if bf16_inference(*tensors) else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, routed to our small-batch kernel or to a prepacked oneDNN weight (`packed`) where faster."""
    if bf16_inference(x, weight):
        rows = x.numel() // x.shape[-1]
        if rows <= MAX_ROWS:
            ext = native_kernels()
            if ext is not None:
                out = ext.bf16_linear(x.reshape(-1, x.shape[-1]), weight, bias)
                return out.view(*x.shape[:-1], weight.shape[0])
        if packed is not None:
            return onednn_linear(x, packed, bias, weight.shape[0])
    return F.linear(x, weight, bias)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for the fused gate|up projection `h = [..., 2I]`; one native pass for bf16 inference."""
    ext = native_bf16(h)
    if ext is not None:
        return ext.silu_mul(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], h.shape[-1] // 2)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def can_prepack(weight: torch.Tensor) -> bool:
    return (
        weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A oneDNN-blocked copy of a bf16 `[N, K]` weight, for `linear(..., packed=)`."""
    with torch.no_grad():
        # The batch-size hint only picks among layouts; measured the same speed for 1..1024 rows.
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 64)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


class Linear(torch.nn.Linear):
    """`nn.Linear` whose inference forward picks the fastest kernel for the shape at hand."""

    packed: torch.Tensor | None = None  # oneDNN-blocked copy of `weight` (see `prepack`); inference only

    def prepack_size(self) -> int:
        """Bytes a prepacked copy would take (0 where it does not apply)."""
        return self.weight.numel() * self.weight.element_size() if can_prepack(self.weight) else 0

    def prepack(self) -> int:
        """Keep a oneDNN-blocked copy of the weight for batched inference; returns the bytes it takes (0 if
        this weight can't be prepacked). Call again after changing the weight: the copy does not follow it."""
        if not can_prepack(self.weight):
            self.packed = None
            return 0
        self.packed = pack_weight(self.weight)
        return self.prepack_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)


def prepack_linears(model: torch.nn.Module) -> int:
    """Prepack every linear layer of an inference model that can be (`Linear`, `QuantLinear`); returns the extra
    bytes used."""
    return sum(m.prepack() for m in model.modules() if callable(getattr(m, "prepack", None)))


def prepack_size(model: torch.nn.Module) -> int:
    """Bytes `prepack_linears` would add."""
    return sum(m.prepack_size() for m in model.modules() if callable(getattr(m, "prepack_size", None)))

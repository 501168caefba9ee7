"""Weight-only quantized linear layers, executed on the packed weights (`QuantLinear`).

Two formats (see `csrc/quant_kernels.cpp` for the memory layout):

- int8: symmetric, one fp32 scale per output row: `w = q * scale[n]`, q in -127..127 (`quantize_model`); or one
  scale per group of inputs, `w = q * scale[n, g]` (GGUF's Q8_0: groups of 32, fp16 scales);
- int4: asymmetric, one scale and one minimum per group of `group_size` inputs of a row:
  `w = q * scale[n, g] + min[n, g]`, q in 0..15, two values per byte. `quantize_model` stores them in bf16;
  GGUF's Q4_0 / Q4_1 in fp16 and Q4_K in fp32, so that every weight is exactly the file's.

On CPUs with AVX512-BF16 (and VNNI), bf16 inputs of a few rows (decode steps of a few streams; the limit per
layer is `QuantLinear.native_rows`) go to our kernels, which never expand the weight: one or two rows (int4
with its interleaved copy: up to 16) are quantized to int8 per 32 inputs and multiplied with the stored bytes
by VNNI dot products (`csrc/vnni_kernels.cpp`; LLMASOS_INT8_ACTIVATIONS=0 keeps them bf16); other small inputs
turn each weight chunk into exact bf16 vectors in registers. A step reads 1/2 or ~1/4 of the bf16 bytes. Larger
inputs (batched decode, prefill) use oneDNN's bf16 matmul, which wins there, on a prepacked bf16 copy where the
engine made one (`QuantLinear.prepack`), else on the weight expanded once per call by a vectorised kernel.
Everything else (other dtypes, CUDA, autograd, LLMASOS_NATIVE_KERNELS=0, a failed build) takes the pure-torch
path: dequantize, then `F.linear`. Both paths compute the same function (up to the int8 rounding of the inputs
on the VNNI route).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmasos.ops.cpu_kernels import can_prepack, native_kernels, onednn_linear, pack_weight

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128)
# Up to this many rows our kernels beat oneDNN on the expanded weight (measured on SmolLM2's and the bench
# model's shapes: at 16 rows expanding + oneDNN was 1.6-2.4x faster than the int4 kernel).
MAX_ROWS = {8: 8, 4: 8}
# With the interleaved copy, the VNNI kernel beats oneDNN's bf16 matmul up to this many rows. int4, over 24
# layers of the bench model's shapes: 2.4 against 4.1 ms at 8 rows, where the bf16 kernel took 6.1; 7.5 against
# 8.1 at 32; SmolLM2's 120 int4 layers: 4.0 against 8.7 ms at 8 rows, 11.7 against 14.3 at 32. int8: 3.6-3.9
# against 4.1-4.6 ms at 8 rows (bf16 kernel 5.3), even at 16, 9.0 against 8.2 at 32; at one row 1.04-1.36x the
# plain layout per layer (1.30x on SmolLM2's 49152 x 576 Q8_0 LM head).
INTERLEAVED_MAX_ROWS = {4: 32, 8: 16}
# int8 with a prepacked bf16 copy: oneDNN wins from ~5 rows (4.6 against 6.8 ms for the bf16 kernel at 8).
INT8_PACKED_MAX_ROWS = 4
INT4_BLOCK = 64  # inputs per packed int4 block: in_features must be a multiple of it


SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quant_kernels():  # noqa: ANN201 - the compiled extension module or None
    """The native kernels (one module holds the bf16 and the quantized ones)."""
    return native_kernels()


# -- formats ---------------------------------------------------------------------------------------------
def check_format(in_features: int, bits: int, group_size: int) -> None:
    """Raise ValueError unless a `[*, in_features]` weight can be stored with these settings."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if bits == 8:
        if in_features % 32:
            raise ValueError(f"int8 needs in_features divisible by 32, got {in_features}")
        return
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
    if in_features % group_size or in_features % INT4_BLOCK:
        raise ValueError(f"int4 needs in_features divisible by the group size ({group_size}) and by "
                         f"{INT4_BLOCK}, got {in_features}")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, K]` float weight -> (q int8 `[N, K]`, scale fp32 `[N]`), symmetric per row."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows: any scale is exact
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


# Fractions of the full [min, max] range tried per group; the one with the least squared error wins.
# Clipping a few outliers shrinks the step for every other weight of the group.
_INT4_CLIP_GRID = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[N, K]` float weight -> (packed uint8 `[N, K/2]`, scales bf16 `[N, K/G]`, mins bf16 `[N, K/G]`)."""
    n, k = w.shape
    check_format(k, 4, group_size)
    wg = w.float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    mid = (lo + hi) / 2
    best_err = best_q = best_scale = best_min = None
    for frac in _INT4_CLIP_GRID:
        scale, mn = _int4_grid(mid + (lo - mid) * frac, mid + (hi - mid) * frac)
        q = torch.round((wg - mn[..., None]) / scale[..., None]).clamp_(0, 15)
        err = ((q * scale[..., None] + mn[..., None] - wg) ** 2).sum(-1)
        if best_err is None:
            best_err, best_q, best_scale, best_min = err, q, scale, mn
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_q = torch.where(better[..., None], q, best_q)
        best_scale = torch.where(better, scale, best_scale)
        best_min = torch.where(better, mn, best_min)
    q, scale, mn = best_q, best_scale, best_min
    return pack_int4(q.reshape(n, k).to(torch.uint8)), scale.to(torch.bfloat16), mn.to(torch.bfloat16)


def _int4_grid(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Round scale and minimum to their stored dtype first, so the codes are chosen for the grid actually used.
    scale = ((hi - lo) / 15).to(torch.bfloat16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, lo.to(torch.bfloat16).float()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes `[N, K]` (0..15) -> `[N, K/2]`: per 64-input block, byte t = input t | input 32+t << 4."""
    n, k = q.shape
    blocks = q.reshape(n, k // INT4_BLOCK, 2, INT4_BLOCK // 2)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    n, half = packed.shape
    blocks = packed.reshape(n, half // (INT4_BLOCK // 2), INT4_BLOCK // 2)
    return torch.stack([blocks & 0xF, blocks >> 4], dim=2).reshape(n, 2 * half)


def interleave_int4(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """Packed int4 `[N, K/2]` with scales and mins `[N, K/G]` -> one uint8 tensor for the VNNI kernel: the
    codes 16 rows at a time (per 16-row group and 32-input block, four 64-byte vectors; lane j's 4 bytes in
    vector t hold row j's inputs 8t+i in their low nibbles and 8t+4+i in their high ones), then the scales and
    the mins repeated per 32 inputs, as `[N/16, K/32, 16]`. Each vector lane then accumulates one output row
    (vnni_kernels.cpp)."""
    n, k = q.shape[0], 2 * q.shape[1]
    nb = k // 32
    if scales.shape[1] != nb:  # groups of 64 or 128: the kernel reads one scale and min per 32 inputs
        scales = scales.repeat_interleave(nb // scales.shape[1], dim=1)
        mins = mins.repeat_interleave(nb // mins.shape[1], dim=1)
    c = unpack_int4(q).reshape(n // 16, 16, nb, 4, 2, 4)  # group, row, block, vector t, low/high, i
    codes = (c[..., 0, :] | (c[..., 1, :] << 4)).permute(0, 2, 3, 1, 4).contiguous()  # group, block, t, row, i

    def by_group(s: torch.Tensor) -> torch.Tensor:
        return s.reshape(n // 16, 16, nb).permute(0, 2, 1).contiguous().reshape(-1).view(torch.uint8)

    return torch.cat([codes.reshape(-1), by_group(scales), by_group(mins)])


def interleave_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 `[N, K]` with scales `[N]` or `[N, K/G]` -> one uint8 tensor for the VNNI kernel of several rows: the
    codes 16 rows at a time (per 16-row group and 32-input block, eight 64-byte vectors; lane j's 4 bytes in
    vector t hold row j's inputs 4t..4t+3), then the scales repeated per 32 inputs, as `[N/16, K/32, 16]`."""
    n, k = q.shape
    nb = k // 32
    codes = q.view(torch.uint8).reshape(n // 16, 16, nb, 8, 4).permute(0, 2, 3, 1, 4)  # group, block, t, row, i
    s = scales.reshape(n, 1).expand(n, nb) if scales.dim() == 1 else scales.repeat_interleave(nb // scales.shape[1], 1)
    s = s.reshape(n // 16, 16, nb).permute(0, 2, 1).contiguous().reshape(-1).view(torch.uint8)
    return torch.cat([codes.contiguous().reshape(-1), s])


def dequantize(layer: QuantLinear, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The layer's effective weight `[N, K]`, in pure torch (any device)."""
    if layer.bits == 8:
        n, k = layer.out_features, layer.in_features
        scales = layer.scales.float().reshape(n, -1, 1)  # [N, 1, 1] per row, [N, K/G, 1] per group
        w = (layer.qweight.float().reshape(n, scales.shape[1], -1) * scales).reshape(n, k)
    else:
        n, k = layer.out_features, layer.in_features
        q = unpack_int4(layer.qweight).float().reshape(n, k // layer.group_size, layer.group_size)
        w = (q * layer.scales.float()[..., None] + layer.mins.float()[..., None]).reshape(n, k)
    return w.to(dtype)


# -- the module ------------------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """A linear layer whose weight is stored, and multiplied, in int8 or int4.

    Buffers (the names in a saved model): `qweight`, `scales`, `mins` (int4 only) and `bias` (if any, in the
    model's dtype). The packed buffers keep their dtypes when the model is moved with `.to(dtype)`.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group_size: int = 128,
                 bias: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        check_format(in_features, bits, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, (group_size if bits == 4 else in_features)
        self.sym8 = False  # int4 whose mins are -8 x its scales (GGUF's Q4_0): the kernels skip the mins
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))
            self.mins = None
        else:
            ng = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales", torch.ones(out_features, ng, dtype=torch.bfloat16, device=device))
            self.register_buffer("mins", torch.zeros(out_features, ng, dtype=torch.bfloat16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_packed(cls, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None,
                    group_size: int | None = None, bias: torch.Tensor | None = None) -> QuantLinear:
        """A layer over weights already in one of the formats (e.g. a GGUF file's Q8_0 / Q4_x blocks).

        int8: `qweight` int8 `[N, K]`, `scales` `[N]` (per row) or `[N, K/G]`; int4: `qweight` uint8 `[N, K/2]` as
        `pack_int4` lays it out, `scales` and `mins` `[N, K/G]`. Scales in fp32, bf16 or fp16.
        """
        bits = 8 if qweight.dtype == torch.int8 else 4
        n = qweight.shape[0]
        k = qweight.shape[1] * (1 if bits == 8 else 2)
        if scales.dtype not in SCALE_DTYPES or (mins is not None and mins.dtype != scales.dtype):
            raise ValueError(f"scales (and mins) must share one of {SCALE_DTYPES}")
        groups = 1 if scales.dim() == 1 else scales.shape[1]
        group = k // groups if group_size is None else group_size
        if scales.shape[0] != n or k % group or k // group != groups:
            raise ValueError(f"scales {tuple(scales.shape)} do not fit a [{n}, {k}] weight in groups of {group}")
        if bits == 8:
            if group % 32:
                raise ValueError(f"int8 groups must be multiples of 32 inputs, got {group}")
        else:
            check_format(k, 4, group)
            if mins is None or mins.shape != scales.shape:
                raise ValueError("int4 needs mins shaped like its scales")
        dtype = bias.dtype if bias is not None else torch.bfloat16
        with torch.device("meta"):
            layer = cls(k, n, bits, group if bits == 4 else 128, bias is not None, dtype=dtype)
        layer.group_size = group
        layer.qweight, layer.scales = qweight, scales
        layer.mins = mins if bits == 4 else None
        layer.sym8 = bits == 4 and torch.equal(mins.float(), scales.float() * -8)
        layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int = 128) -> QuantLinear:
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None,
                    device=w.device, dtype=w.dtype)
        if bits == 8:
            layer.qweight, layer.scales = quantize_int8(w)
        else:
            layer.qweight, layer.scales, layer.mins = quantize_int4(w, group_size)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # `.to(dtype)` converts every float tensor; the packed format's scales must stay as they are.
        keep = {name: buf.dtype for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, dtype in keep.items():
            if self._buffers[name].dtype != dtype:
                self._buffers[name] = self._buffers[name].to(dtype)
        return self

    # For inputs past MAX_ROWS rows (batched decode, prefill), oneDNN's bf16 matmul on the expanded weight beats
    # any dot-product kernel. `packed`: a oneDNN-blocked bf16 copy made once (`prepack`, opted into by the
    # engine like the bf16 layers' copies); `dense`: a bf16 tensor of the same weights the model holds anyway
    # (a tied embedding). Without either, each such call expands the weight.
    packed: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    # `interleaved`: int4, a copy laid out 16 rows at a time for the VNNI kernel of 1-16 rows (see
    # interleave_int4), made with `packed` under the same memory policy: about the bytes of the int4 weight again.
    interleaved: torch.Tensor | None = None

    def interleave_size(self) -> int:
        """Bytes the interleaved copy would take (0 where it does not apply)."""
        if not (self.group_size % 32 == 0 and self.out_features % 16 == 0 and self.qweight.is_cpu
                and quant_kernels() is not None):
            return 0
        blocks = self.in_features * self.out_features // 32  # one scale (and min) per 32 inputs
        return self.qweight.numel() + blocks * self.scales.element_size() * (1 if self.bits == 8 else 2)

    def native_rows(self) -> int:
        """Inputs of up to this many rows run our kernels; more go to oneDNN (see MAX_ROWS and below)."""
        if self.interleaved is not None:
            return INTERLEAVED_MAX_ROWS[self.bits]
        if self.bits == 8 and self.packed is not None:
            return INT8_PACKED_MAX_ROWS
        return MAX_ROWS[self.bits]

    def interleave(self) -> int:
        """Keep the 16-row-interleaved copy for steps of 1-16 rows; returns its bytes (0 where it does not apply)."""
        size = self.interleave_size()
        if not size:
            self.interleaved = None
        elif self.bits == 8:
            self.interleaved = interleave_int8(self.qweight, self.scales)
        else:
            self.interleaved = interleave_int4(self.qweight, self.scales, self.mins)
        return size

    def prepack_size(self) -> int:
        if not (self.qweight.is_cpu and can_prepack_dtype()):
            return 0
        return 2 * self.in_features * self.out_features + self.interleave_size()

    def prepack(self) -> int:
        """Keep a oneDNN-blocked bf16 copy of the weights for batched steps (and, for int4, the interleaved copy
        for steps of up to 16 rows); returns their bytes."""
        if not self.prepack_size():
            self.packed = self.interleaved = None
            return 0
        self.interleave()
        w = self.dense if self.dense is not None and self.dense.dtype == torch.bfloat16 else None
        if w is None:
            ext = quant_kernels()
            w = dequantize(self, torch.bfloat16) if ext is None else _expand(ext, self)
        self.packed = pack_weight(w)
        return self.prepack_size()

    def forward(self, x: torch.Tensor, native: bool | None = None) -> torch.Tensor:
        """`native=False` forces the torch path (tests); None picks the fastest available."""
        return quant_linear(x, self, native)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size != self.in_features else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}, " \
               f"bias={self.bias is not None}"


def _expand(ext, layer: QuantLinear) -> torch.Tensor:  # noqa: ANN001 - the extension module
    if layer.bits == 8:
        return ext.int8_dequantize(layer.qweight, layer.scales)
    return ext.int4_dequantize(layer.qweight, layer.scales, layer.mins, layer.group_size)


def can_prepack_dtype() -> bool:
    return can_prepack(torch.empty(0, dtype=torch.bfloat16))


def quant_linear(x: torch.Tensor, layer: QuantLinear, native: bool | None = None) -> torch.Tensor:
    ext = quant_kernels() if native is not False else None
    if (
        ext is not None
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
    ):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] <= layer.native_rows():
            if layer.bits == 8:
                out = ext.int8_linear(x2, layer.qweight, layer.scales, layer.bias, layer.interleaved)
            else:
                out = ext.int4_linear(x2, layer.qweight, layer.scales, layer.mins, layer.group_size, layer.bias,
                                      layer.sym8, layer.interleaved)
            return out.view(*x.shape[:-1], layer.out_features)
        if layer.packed is not None:
            return onednn_linear(x, layer.packed, layer.bias, layer.out_features)
        if layer.dense is not None and layer.dense.dtype == x.dtype:
            return F.linear(x, layer.dense, layer.bias)
        return F.linear(x, _expand(ext, layer), layer.bias)
    return F.linear(x, dequantize(layer, x.dtype), layer.bias)

"""Compute kernels the models call: where PyTorch's own are slow on the target hardware, ours."""

from llmasos.ops.cpu_kernels import Linear, linear, native_bf16, native_kernels, prepack_linears, swiglu

__all__ = ["Linear", "linear", "native_bf16", "native_kernels", "prepack_linears", "swiglu"]

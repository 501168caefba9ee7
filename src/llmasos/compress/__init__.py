"""Model compression: distillation, quantization (executed by the kernel) and pruning."""

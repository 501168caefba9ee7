"""The training toolchain: tokenizers, data preparation, pre-training, fine-tuning and recipes."""

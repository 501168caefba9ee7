"""GGUF files (llama.cpp / Ollama's model format): config, tokenizer and weights, read natively."""

from llmasos.models.gguf.dequant import SUPPORTED_TYPES, UnsupportedWeightTypeError, dequantize
from llmasos.models.gguf.loader import load_gguf_model, open_gguf
from llmasos.models.gguf.reader import SUPPORTED_ARCHS, GGUFFile, is_gguf
from llmasos.models.gguf.tokenizer import build_tokenizer

__all__ = ["SUPPORTED_ARCHS", "SUPPORTED_TYPES", "GGUFFile", "UnsupportedWeightTypeError", "build_tokenizer",
           "dequantize", "is_gguf", "load_gguf_model", "open_gguf"]

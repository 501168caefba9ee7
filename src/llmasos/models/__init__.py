"""Native Transformer models and Hugging Face checkpoint loading."""

from llmasos.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError
from llmasos.models.decoder import DecoderLM
from llmasos.models.loader import load_model
from llmasos.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

__all__ = ["SUPPORTED_MODEL_TYPES", "DecoderLM", "ModelConfig", "UnsupportedModelError", "load_model"]
__all__ += ["Seq2SeqConfig", "Seq2SeqTransformer"]

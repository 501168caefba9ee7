"""Reading a GGUF file: metadata, the Hugging Face-style config it implies, and its tensors.

Parsing is the `gguf` package's (`GGUFReader`, memory-mapped); we only make it fast on large vocabularies and
turn llama.cpp's metadata keys into the `config.json` keys `ModelConfig.from_hf` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.constants import GGMLQuantizationType

from llmasos.models.config import UnsupportedModelError
from llmasos.models.hf_format import HF_CLASSES

# general.architecture -> the HF model_type our decoder runs it as
SUPPORTED_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# Metadata arrays read in full (everything else of array type is left as the reader's lazy field).
_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


class _Reader(GGUFReader):
    """`GGUFReader` over a plain ndarray view of the mapping.

    The stock reader slices its `np.memmap` once per field part: a 49k-token vocabulary makes ~250k slices, and
    each memmap slice runs memmap's `__array_finalize__` (2-4 s for SmolLM2). Slicing a plain ndarray view of
    the same mapping gives the same arrays (still backed by the file) in ~0.6 s.
    """

    _plain: np.ndarray | None = None

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        if self._plain is None:
            self._plain = self.data.view(np.ndarray)
        dt = np.dtype(dtype)
        count = int(count)
        arr = self._plain[offset : offset + dt.itemsize * count].view(dt)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


@dataclass
class GGUFTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: [rows (out), cols (in)] for a matrix
    data: np.ndarray  # as the reader maps it: raw bytes [rows, bytes per row] for block types


def is_gguf(path: str | Path) -> bool:
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


class GGUFFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {self.path} not found")
        try:
            self._reader = _Reader(str(self.path))
        except (ValueError, KeyError, IndexError) as exc:  # bad magic, truncated or corrupt header
            raise ValueError(f"{self.path} is not a readable GGUF file: {exc}") from exc

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Every key as a Python value (strings, numbers, lists), except large arrays we do not use."""
        out: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            if field.types and field.types[0] == GGUFValueType.ARRAY and key not in _ARRAYS \
                    and len(field.data) > 4096:
                continue
            out[key] = field.contents()
        return out

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")

    @cached_property
    def tensors(self) -> dict[str, GGUFTensor]:
        return {t.name: GGUFTensor(t.name, t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())), t.data)
                for t in self._reader.tensors}

    def hf_config(self) -> dict[str, Any]:
        """The file's hyper-parameters as a Hugging Face `config.json` dict for `ModelConfig.from_hf`."""
        arch = self.architecture
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(f"{self.path.name}: GGUF architecture {arch!r} is not supported; "
                                        f"supported: {', '.join(sorted(SUPPORTED_ARCHS))}")
        m = self.metadata

        def key(name: str, default: Any = None) -> Any:
            return m.get(f"{arch}.{name}", default)

        heads = key("attention.head_count")
        hidden = key("embedding_length")
        vocab = key("vocab_size") or len(m.get("tokenizer.ggml.tokens") or []) \
            or self.tensors["token_embd.weight"].shape[0]
        eos = [m[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                              "tokenizer.ggml.eom_token_id") if isinstance(m.get(k), int)]
        cfg: dict[str, Any] = {
            "model_type": SUPPORTED_ARCHS[arch],
            "architectures": [HF_CLASSES[SUPPORTED_ARCHS[arch]][1]],
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": key("feed_forward_length"),
            "num_hidden_layers": key("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": key("attention.key_length") or hidden // heads,
            "max_position_embeddings": key("context_length", 2048),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": key("rope.freq_base", 10000.0),
            "hidden_act": "silu",
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": "blk.0.attn_q.bias" in self.tensors and arch != "qwen2",
            "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": sorted(set(eos)) or None,
        }
        if "rope_freqs.weight" in self.tensors:
            # Llama 3.1+: llama.cpp stores the frequency-dependent rope scaling as per-frequency divisors.
            factors = np.asarray(self.tensors["rope_freqs.weight"].data, dtype=np.float32).reshape(-1)
            cfg["rope_scaling"] = {"rope_type": "freq_factors", "factors": factors.tolist()}
        scaling = key("rope.scaling.type")
        if scaling in ("linear", "yarn") and key("rope.scaling.factor"):
            if scaling == "yarn":
                raise UnsupportedModelError(f"{self.path.name}: YaRN rope scaling is not supported")
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
        return cfg

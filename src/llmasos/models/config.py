"""One plain config for every decoder family we run natively, parsed from a Hugging Face `config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# model_type -> the family that implements it. Mistral, SmolLM and TinyLlama ship as model_type "llama"
# or "mistral" and share Llama's layout.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture is not one of the native families."""


@dataclass
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int
    norm_eps: float = 1e-6
    norm: str = "rms"  # "rms" | "layer"
    activation: str = "silu"  # "silu" (SwiGLU) | "gelu_tanh" (GPT-2 MLP)
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    learned_positions: bool = False
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.num_layers <= 0 or self.num_heads <= 0:
            raise ValueError("hidden_size, num_layers and num_heads must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def num_params(self) -> int:
        """Exact parameter count of the model this config builds (tied embeddings counted once)."""
        from llmasos.models.decoder import meta_model

        return sum(p.numel() for p in meta_model(self).parameters())  # shapes only: no memory, no init

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed Hugging Face `config.json` (transformers 4.x and 5.x layouts)."""
        model_type = cfg.get("model_type")
        family = SUPPORTED_MODEL_TYPES.get(model_type or "")
        if family is None:
            raise UnsupportedModelError(
                f"unsupported architecture model_type={model_type!r} ({cfg.get('architectures')}); "
                f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
            )
        eos = cfg.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if family == "gpt2":
            h = cfg["n_embd"]
            heads = cfg["n_head"]
            return cls(
                family=family,
                vocab_size=cfg["vocab_size"],
                hidden_size=h,
                intermediate_size=cfg.get("n_inner") or 4 * h,
                num_layers=cfg["n_layer"],
                num_heads=heads,
                num_kv_heads=heads,
                head_dim=h // heads,
                max_position=cfg.get("n_positions", 1024),
                norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                norm="layer",
                activation="gelu_tanh",
                gated_mlp=False,
                qkv_bias=True,
                o_bias=True,
                mlp_bias=True,
                learned_positions=True,
                tie_word_embeddings=True,
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"hidden_act={act!r} is not supported for {model_type}; expected 'silu'")
        heads = cfg["num_attention_heads"]
        # transformers 5 moved rope_theta/rope_scaling into one rope_parameters dict.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rope_type == "default" else {**rope, "rope_type": rope_type}
        qkv_bias = True if family == "qwen2" else bool(cfg.get("attention_bias", False))
        return cls(
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position=cfg.get("max_position_embeddings", 2048),
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            qkv_bias=qkv_bias,
            o_bias=bool(cfg.get("attention_bias", False)) and family != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=family == "qwen3",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

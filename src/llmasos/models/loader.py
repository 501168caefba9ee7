"""Load Hugging Face checkpoints (a local directory or a hub name) into the native models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from llmasos.models.config import ModelConfig, UnsupportedModelError
from llmasos.models.decoder import DecoderLM, meta_model
from llmasos.models.default_model import resolve_model_name
from llmasos.models.gguf import is_gguf, load_gguf_model, open_gguf
from llmasos.models.layers import RotaryEmbedding

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 halves memory traffic and has native (AMX/AVX-512) kernels on current CPUs and GPUs.
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Where a model lives: a local directory or GGUF file as is; `builtin`, the built-in model; `org/repo` (a
    Hugging Face directory) or `org/repo/file.gguf`, downloaded from the hub when online."""
    name_or_path = resolve_model_name(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise ValueError(f"{path} is neither a model directory nor a GGUF file")
        return path
    if str(name_or_path).endswith(".gguf") and not path.exists() and str(name_or_path).count("/") == 2 \
            and not str(name_or_path).startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download

        repo, _, filename = str(name_or_path).rpartition("/")
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as exc:  # offline, missing repo or file: one clear message
            raise FileNotFoundError(f"could not find {name_or_path!r} locally or download it from the Hugging "
                                    f"Face hub: {exc}") from exc
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"model directory {name_or_path} not found")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as exc:  # network errors, missing repos, gated models: one clear message
        raise FileNotFoundError(
            f"could not find {name_or_path!r} locally or download it from the Hugging Face hub: {exc}"
        ) from exc


def read_hf_config(model_dir: Path) -> dict:
    """The `config.json` dict of a model directory, or the one a GGUF file's metadata implies."""
    if is_gguf(model_dir):
        return open_gguf(model_dir).hf_config()
    cfg = json.loads((model_dir / "config.json").read_text())
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        # Chat checkpoints often list extra stop ids (e.g. <|eot_id|>) only in generation_config.json.
        gen_eos = json.loads(gen.read_text()).get("eos_token_id")
        if gen_eos is not None:
            ids = [cfg["eos_token_id"]] if isinstance(cfg.get("eos_token_id"), int) else list(cfg.get("eos_token_id") or [])
            ids += [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
            cfg["eos_token_id"] = sorted(set(ids))
    return cfg


def iter_checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if files:
        for name in files:
            with safe_open(str(model_dir / name), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield key, f.get_tensor(key)
        return
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {model_dir}")
    for path in bins:
        yield from torch.load(path, map_location="cpu", weights_only=True).items()


def convert_state_dict(cfg: ModelConfig, tensors: Iterator[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Map HF parameter names onto ours, fusing q/k/v and gate/up projections."""
    raw = dict(tensors)
    out: dict[str, torch.Tensor] = {}
    if cfg.family == "gpt2":
        raw = {k.removeprefix("transformer."): v for k, v in raw.items()}
        out["embed_tokens.weight"] = raw["wte.weight"]
        out["embed_positions.weight"] = raw["wpe.weight"]
        out["norm.weight"], out["norm.bias"] = raw["ln_f.weight"], raw["ln_f.bias"]
        for i in range(cfg.num_layers):
            src, dst = f"h.{i}.", f"layers.{i}."
            # GPT-2's Conv1D stores weights as [in, out]: transpose to nn.Linear's [out, in].
            for a, b in [("ln_1", "input_norm"), ("ln_2", "post_attn_norm")]:
                out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = raw[f"{src}{a}.weight"], raw[f"{src}{a}.bias"]
            for a, b in [("attn.c_attn", "attn.qkv_proj"), ("attn.c_proj", "attn.o_proj"),
                         ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")]:
                out[f"{dst}{b}.weight"] = raw[f"{src}{a}.weight"].t().contiguous()
                out[f"{dst}{b}.bias"] = raw[f"{src}{a}.bias"]
        out["lm_head.weight"] = out["embed_tokens.weight"]
        return out

    out["embed_tokens.weight"] = raw["model.embed_tokens.weight"]
    out["norm.weight"] = raw["model.norm.weight"]
    out["lm_head.weight"] = raw["model.embed_tokens.weight"] if cfg.tie_word_embeddings else raw["lm_head.weight"]
    for i in range(cfg.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[f"{dst}input_norm.weight"] = raw[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attn_norm.weight"] = raw[f"{src}post_attention_layernorm.weight"]
        for p in ["weight", "bias"] if cfg.qkv_bias else ["weight"]:
            out[f"{dst}attn.qkv_proj.{p}"] = torch.cat([raw[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
        out[f"{dst}attn.o_proj.weight"] = raw[f"{src}self_attn.o_proj.weight"]
        if cfg.o_bias:
            out[f"{dst}attn.o_proj.bias"] = raw[f"{src}self_attn.o_proj.bias"]
        if cfg.qk_norm:
            out[f"{dst}attn.q_norm.weight"] = raw[f"{src}self_attn.q_norm.weight"]
            out[f"{dst}attn.k_norm.weight"] = raw[f"{src}self_attn.k_norm.weight"]
        for p in ["weight", "bias"] if cfg.mlp_bias else ["weight"]:
            out[f"{dst}mlp.up_proj.{p}"] = torch.cat([raw[f"{src}mlp.gate_proj.{p}"], raw[f"{src}mlp.up_proj.{p}"]])
            out[f"{dst}mlp.down_proj.{p}"] = raw[f"{src}mlp.down_proj.{p}"]
    return out


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None, dtype: torch.dtype,
                device: str | torch.device = "cpu") -> DecoderLM:
    """Build a model without a random init pass, then load weights (or random-init if none are given)."""
    if state_dict is None:
        model = DecoderLM(cfg)
        return model.to(device=device, dtype=dtype)
    model = meta_model(cfg)
    state_dict = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    if not cfg.learned_positions:  # buffers are not in the checkpoint: compute them for real
        model.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling).to(device)
    return model.eval()


def load_model(name_or_path: str | Path | None, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "cpu") -> tuple[DecoderLM, Path]:
    """(model, where it was loaded from): a HF directory, a GGUF file, a hub name, `builtin`, or None (the
    default model)."""
    model_dir = resolve_model_dir(name_or_path)
    if is_gguf(model_dir):
        return load_gguf_model(model_dir, resolve_dtype(dtype), device), model_dir
    hf = read_hf_config(model_dir)
    if hf.get("quantization_config"):
        # Imported here: only quantized models need the compression package.
        from llmasos.compress.quantize import is_quantized_config, load_quantized

        if not is_quantized_config(hf):
            method = hf["quantization_config"].get("quant_method")
            raise UnsupportedModelError(f"{model_dir} is quantized with {method!r}; llmasos loads only its own "
                                        "quantized models (llmasos compress quantize)")
        return load_quantized(model_dir, hf, resolve_dtype(dtype), device), model_dir
    cfg = ModelConfig.from_hf(hf)
    state = convert_state_dict(cfg, iter_checkpoint_tensors(model_dir))
    return build_model(cfg, state, resolve_dtype(dtype), device), model_dir

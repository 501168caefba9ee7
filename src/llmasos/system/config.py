"""The OS configuration: one TOML or YAML file, environment overrides, validated with pydantic.

Environment variables `LLMASOS_<FIELD>` override the file; nested fields use `__`
(`LLMASOS_MODEL__THREADS=2`, `LLMASOS_DATABASE_URL=postgresql+psycopg://...`). A bad value is an error that
names the field.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmasos.system.manifest import Quotas

ENV_PREFIX = "LLMASOS_"


class ModelConfig(BaseModel):
    """The model driver: the native engine, or OpenAI-compatible upstreams when `upstreams` is set."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="HF dir / hub name, GGUF file, 'builtin'; None: default")
    dtype: str = "auto"
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=2)
    kv_cache_memory: int | None = Field(default=None, gt=0)
    max_num_seqs: int = Field(default=64, ge=1)
    max_num_batched_tokens: int = Field(default=1024, ge=1)
    upstreams: list[str] = Field(default_factory=list, description="OpenAI-compatible base URLs (vLLM, SGLang, "
                                 "Ollama, llama.cpp, LLMasOS): the model runs there instead of in process")
    upstream_model: str | None = Field(default=None, description="the model id on the upstreams (default: theirs)")
    upstream_api_key: str | None = None
    upstream_max_inflight: int = Field(default=64, ge=1, description="requests out at once per upstream; the "
                                       "rest wait in the OS's priority / fair-share queue")
    tokenizer: str | None = Field(default=None, description="the upstream model's tokenizer (HF dir / hub name / "
                                  "GGUF / builtin); default: `name`")

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_urls(cls, v: Any) -> Any:
        return [u.strip() for u in v.split(",") if u.strip()] if isinstance(v, str) else v


class EmbedderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="sentence-transformers name or path; None: all-MiniLM-L6-v2")
    device: str = "cpu"


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recent_turns_share: float = Field(default=0.5, gt=0, lt=1, description="window share for verbatim turns")
    summary_share: float = Field(default=0.15, ge=0, lt=1)
    recall_share: float = Field(default=0.15, ge=0, lt=1)
    summarize_after_tokens: int = Field(default=256, ge=16, description="unsummarised old tokens that trigger a summary")
    recall_k: int = Field(default=4, ge=0, le=50)


class ServerConfig(BaseModel):
    """The HTTP server (`llmasos serve`)."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(default="127.0.0.1", description="with no API keys configured it binds to localhost only")
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies get 413")
    max_pending: int = Field(default=1024, ge=1, description="LLM requests queued or running before 503")
    client_app: str = Field(default="api", description="the app that key-less local requests act as")


class OSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".llmasos", description="LLMASOS_DATA_DIR")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None: SQLite in data_dir")
    database_schema: str | None = Field(default=None, description="PostgreSQL schema to use (created if missing)")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL", description="NORMAL survives kill -9; FULL also survives power loss, slower writes")
    model: ModelConfig = Field(default_factory=ModelConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    apps: list[str] = Field(default_factory=lambda: ["assistant"], description="apps to install at boot")
    apps_dir: Path | None = Field(default=None, description="a folder of app modules to discover")
    default_quotas: Quotas = Field(default_factory=Quotas)
    process_history: int = Field(default=1000, ge=0, description="finished processes kept for ps")
    load_model: bool = Field(default=True, description="False: boot without the kernel (storage and memory only)")
    server: ServerConfig = Field(default_factory=ServerConfig)


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _env_overrides(env: dict[str, str]) -> dict:
    out: dict = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == "LLMASOS_HOME":
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        if path[0] not in OSConfig.model_fields:
            continue  # other LLMASOS_* variables (kernel switches) are not config fields
        try:
            value: Any = json.loads(raw)  # numbers, booleans, lists; plain strings stay strings
        except json.JSONDecodeError:
            value = raw
        _set_path(out, path, value)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> OSConfig:
    """Read the file (TOML or YAML by suffix), apply environment then keyword overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"config file {path} is not valid {path.suffix.lstrip('.')}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    data = _merge(data, overrides)
    try:
        return OSConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"config field {field!r}: {first['msg']} (got {first.get('input')!r})") from exc

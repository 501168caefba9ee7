"""An app's manifest: who it is and what it may do. Declared up front, checked on every system call."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmasos.system.guards.pii import PIIPolicy

# The capabilities a manifest can ask for; `tools:<name>` grants one tool, `tools:*` all of them.
BASE_PERMISSIONS = ("llm", "embed", "memory.read", "memory.write", "storage", "network")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def check_permission_name(p: str) -> str:
    if p in BASE_PERMISSIONS or (p.startswith("tools:") and len(p) > 6):
        return p
    raise ValueError(f"unknown permission {p!r}; known: {', '.join(BASE_PERMISSIONS)}, tools:<name>, tools:*")


class Quotas(BaseModel):
    """Per-app limits; None means unlimited. Exceeding one is a `QuotaExceeded` error (HTTP 429)."""

    model_config = ConfigDict(extra="forbid")
    max_concurrent: int | None = Field(default=None, ge=1, description="LLM processes running at once")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt + generated tokens per minute")
    storage_bytes: int | None = Field(default=None, ge=0, description="key-value, documents and files together")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str = "0.1.0"
    description: str = ""
    permissions: list[str] = Field(default_factory=lambda: ["llm", "embed", "memory.read", "memory.write"])
    priority: int = Field(default=0, ge=-20, le=19, description="default nice value: lower runs first")
    weight: float = Field(default=1.0, gt=0, le=1000, description="share of the model when apps compete")
    quotas: Quotas = Field(default_factory=Quotas)
    pii: PIIPolicy = Field(default_factory=PIIPolicy)
    handler_timeout: float = Field(default=300.0, gt=0, description="seconds a handler may run")
    latency_sensitive: bool = False  # interactive: less urgent apps' prompts run in short chunks meanwhile
    auto_approve: list[str] = Field(default_factory=list, description="sensitive tools run without asking")
    mcp_servers: list[dict] = Field(default_factory=list, description="external MCP tool servers")
    system_prompt: str = ""
    kind: Literal["app", "client"] = "app"  # client: an API key's own app, registered with a default manifest

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"app name {v!r} must be lowercase letters, digits, '-' or '_' (max 64), starting with a letter")
        return v

    @field_validator("permissions")
    @classmethod
    def _perms(cls, v: list[str]) -> list[str]:
        return sorted({check_permission_name(p) for p in v})

    def allows(self, permission: str) -> bool:
        if permission in self.permissions:
            return True
        return permission.startswith("tools:") and "tools:*" in self.permissions


def client_manifest(name: str) -> Manifest:
    """The manifest of an API client that is not an installed app."""
    return Manifest(name=name, description="API client", kind="client",
                    permissions=["llm", "embed", "memory.read", "memory.write"])

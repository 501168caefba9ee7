"""What the shell's OS commands talk to: a running server (`--url`, `LLMASOS_URL`, key from
`LLMASOS_API_KEY`) or, when none is given, an OS booted in this process on the data directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from llmasos.system.errors import from_response

URL_ENV, KEY_ENV = "LLMASOS_URL", "LLMASOS_API_KEY"


class RemoteOS:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(600.0, connect=5.0))

    def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ConnectionError(f"no LLMasOS server at {self.url} ({exc}); start one with `llmasos serve`") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": {"message": r.text[:300]}}
            raise from_response(r.status_code, body)
        return r.json()

    def ps(self, app: str | None = None, state: str | None = None) -> list[dict]:
        params = {k: v for k, v in {"app": app, "state": state}.items() if v}
        return self._req("GET", "/v1/processes", params=params)["data"]

    def kill(self, pid: int) -> dict:
        return self._req("DELETE", f"/v1/processes/{pid}")

    def renice(self, pid: int, priority: int) -> dict:
        return self._req("PATCH", f"/v1/processes/{pid}", json={"priority": priority})

    def apps(self) -> list[dict]:
        return self._req("GET", "/v1/apps")["data"]

    def models(self) -> list[dict]:
        return self._req("GET", "/v1/models")["data"]

    def audit(self, **filters: Any) -> list[dict]:
        return self._req("GET", "/v1/audit", params={k: v for k, v in filters.items() if v is not None})["data"]

    def run(self, app: str, text: str, session: str) -> dict:
        return self._req("POST", f"/v1/apps/{app}/chat", json={"session_id": session, "message": text})

    def system(self) -> dict:
        return self._req("GET", "/v1/system")

    def close(self) -> None:
        self.http.close()


class LocalOS:
    """An OS booted here; without `model` it boots without the kernel (apps, audit and keys need none)."""

    def __init__(self, data_dir: Path | None, config: Path | None, model: bool = False,
                 model_name: str | None = None) -> None:
        from llmasos.system.os import OS

        overrides: dict[str, Any] = {"load_model": model}
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        if model_name is not None:
            overrides["model"] = {"name": model_name}
        self.os = OS(config, **overrides)

    def ps(self, app: str | None = None, state: str | None = None) -> list[dict]:
        return self.os.ps(app, state)

    def kill(self, pid: int) -> dict:
        return self.os.kill(pid)

    def renice(self, pid: int, priority: int) -> dict:
        return self.os.renice(pid, priority)

    def apps(self) -> list[dict]:
        return [m.model_dump(mode="json") for m in self.os.apps()]

    def models(self) -> list[dict]:
        from llmasos.server.state import chat_model_id

        out = [{"id": self.os.embedder.id, "object": "model", "owned_by": "llmasos"}]
        if self.os.llm is not None:
            out.insert(0, {"id": chat_model_id(self.os), "object": "model", "owned_by": "llmasos"})
        return out

    def audit(self, **filters: Any) -> list[dict]:
        app = filters.pop("app", None)
        return self.os.services.audit.query(app, **{k: v for k, v in filters.items() if v is not None})

    def run(self, app: str, text: str, session: str) -> dict:
        from llmasos.sdk.discovery import bundled

        if not self.os.handlers(app) and (found := bundled(app)) is not None:
            self.os.install(found)  # a bundled app runs from the shell even when the config does not list it
        procs: list = []
        reply = self.os.run(self.os.run_handler(app, "chat", {"session_id": session, "message": text},
                                                proc_out=procs))
        return {"app": app, "session_id": session, "reply": reply, "pid": procs[0].pid if procs else None}

    def system(self) -> dict:
        return self.os.info()

    def close(self) -> None:
        self.os.shutdown()


class KeyAdmin:
    """The key store of a data directory (or the configured database), without booting the OS."""

    def __init__(self, data_dir: Path | None, config: Path | None) -> None:
        from llmasos.system.apps import AppTable
        from llmasos.system.config import load_config
        from llmasos.system.principals import KeyStore
        from llmasos.system.storage.db import Database, sqlite_url

        cfg = load_config(config, **({"data_dir": data_dir} if data_dir is not None else {}))
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(cfg.database_url or sqlite_url(cfg.data_dir), cfg.database_schema, cfg.sqlite_synchronous)
        self.keys, self.apps = KeyStore(self.db), AppTable(self.db)

    def create(self, app: str | None, user: str = "", admin: bool = False) -> str:
        from llmasos.system.apps import issue_key

        return issue_key(self.keys, self.apps, app, user, admin)

    def close(self) -> None:
        self.db.close()


def resolve_url(url: str | None) -> str | None:
    return url or os.environ.get(URL_ENV) or None


def connect(url: str | None, key: str | None, data_dir: Path | None, config: Path | None, *,
            model: bool = False, model_name: str | None = None) -> RemoteOS | LocalOS:
    url = resolve_url(url)
    if url:
        return RemoteOS(url, key or os.environ.get(KEY_ENV))
    return LocalOS(data_dir, config, model=model, model_name=model_name)

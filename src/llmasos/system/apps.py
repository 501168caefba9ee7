"""Installed apps: their manifests, persisted so that keys and data outlive a restart."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from llmasos.system.errors import InvalidRequest, NotFound
from llmasos.system.manifest import Manifest, Quotas, client_manifest
from llmasos.system.principals import ADMIN, KeyStore, Principal
from llmasos.system.storage.db import Database
from llmasos.system.storage.store import upsert
from llmasos.system.storage.tables import apps


class AppTable:
    def __init__(self, db: Database, default_quotas: Quotas | None = None) -> None:
        """`default_quotas` fill what a manifest leaves unlimited (API clients' manifests included), when it is
        read: the stored manifest stays as declared."""
        self.db = db
        self.default_quotas = default_quotas
        self._cache: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def _effective(self, m: Manifest) -> Manifest:
        if self.default_quotas is None:
            return m
        defaults = self.default_quotas.model_dump()
        quotas = {k: v if v is not None else defaults[k] for k, v in m.quotas.model_dump().items()}
        return m.model_copy(update={"quotas": Quotas.model_validate(quotas)})

    def install(self, manifest: Manifest) -> Manifest:
        with self.db.engine.begin() as conn:
            upsert(conn, apps, {"name": manifest.name, "manifest": manifest.model_dump(mode="json"),
                                "installed_at": time.time()}, ["name"])
        manifest = self._effective(manifest)
        with self._lock:
            self._cache[manifest.name] = manifest
        return manifest

    def ensure_client(self, name: str) -> Manifest:
        """An API client that is not an installed app gets a client manifest the first time it is named."""
        try:
            return self.get(name)
        except NotFound:
            return self.install(client_manifest(name))

    def get(self, name: str) -> Manifest:
        with self._lock:
            m = self._cache.get(name)
        if m is not None:
            return m
        with self.db.engine.connect() as conn:
            row = conn.execute(select(apps.c.manifest).where(apps.c.name == name)).first()
        if row is None:
            raise NotFound(f"no app {name!r}")
        m = self._effective(Manifest.model_validate(row[0]))
        with self._lock:
            self._cache[name] = m
        return m

    def list(self) -> list[Manifest]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(apps.c.manifest).order_by(apps.c.name))
            return [self._effective(Manifest.model_validate(r[0])) for r in rows]


def issue_key(keys: KeyStore, apps: AppTable, app: str | None, user: str = "", admin: bool = False) -> str:
    """A new API key: the admin's, or one acting for `app` (registered as an API client if not installed)."""
    if admin:
        return keys.create(ADMIN)[1]
    if not app:
        raise InvalidRequest("a key needs an app (or admin)", param="app")
    apps.ensure_client(app)
    return keys.create(Principal.for_app(app, user))[1]

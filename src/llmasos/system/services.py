"""The services a system call can use, built once per OS and passed in (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasos.system.apps import AppTable
from llmasos.system.audit import AuditLog
from llmasos.system.memory.codec import ChatCodec
from llmasos.system.memory.context import ContextBuilder
from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, RecallMemory, SummaryStore
from llmasos.system.principals import KeyStore
from llmasos.system.processes import ProcessTable
from llmasos.system.storage.db import Database
from llmasos.system.storage.files import FileArea
from llmasos.system.storage.store import Store
from llmasos.system.tools.registry import ToolRegistry


@dataclass
class Services:
    db: Database
    data_dir: Path
    store: Store
    apps: AppTable
    keys: KeyStore
    audit: AuditLog
    procs: ProcessTable
    tools: ToolRegistry
    recall: RecallMemory
    archival: ArchivalMemory
    core: CoreMemory
    summaries: SummaryStore
    context: ContextBuilder
    codec: ChatCodec
    embedder: Any  # system.embedder.Embedder
    llm: Any = None  # kernel.AsyncLLM, None when booted without a model
    ledger: Any = None  # ledger.TokenLedger: tokens per app in the database, for quotas across replicas
    mcp: Any = None  # tools.mcp_client.MCPManager, created on first use
    window: int = 2048  # the kernel's context window, in tokens
    _files: dict[str, FileArea] = field(default_factory=dict)

    def refresh_states(self) -> None:
        """Read live LLM processes' states off the kernel: waiting, running, or preempted (queued again after
        its KV blocks were taken)."""
        from llmasos.kernel.sequence import SequenceStatus
        from llmasos.system.processes import ProcState

        if self.llm is None:
            return
        requests = self.llm.engine.requests
        for p in self.procs.ps(include_finished=False):
            state = requests.get(p.request_id) if p.request_id else None
            if state is None or not state.seqs:
                continue
            seq = state.seqs[0]
            if seq.status is SequenceStatus.RUNNING:
                self.procs.set_state(p, ProcState.RUNNING)
            elif seq.num_preemptions:
                self.procs.set_state(p, ProcState.PREEMPTED)

    def files(self, app: str) -> FileArea:
        """The app's file area: a directory under the data dir that it cannot leave."""
        area = self._files.get(app)
        if area is None:
            area = self._files[app] = FileArea(self.data_dir / "files" / app)
        return area

    def storage_limit(self, app: str) -> int | None:
        return self.apps.get(app).quotas.storage_bytes

    def write_file(self, app: str, path: str, data: bytes | str) -> int:
        """Write within the app's storage quota, which key-value data, documents and files share."""
        area = self.files(app)
        limit = self.storage_limit(app)
        area.max_bytes = None if limit is None else max(limit - self.store.used_bytes(app), 0)
        return area.write(path, data)

"""Memory tiers: working context (built per request), recall (every turn), archival (long-term), core blocks."""

from llmasos.system.memory.context import ContextBuilder, ContextReport, ContextResult
from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, RecallMemory, SummaryStore

__all__ = ["ArchivalMemory", "ContextBuilder", "ContextReport", "ContextResult", "CoreMemory", "RecallMemory",
           "SummaryStore"]

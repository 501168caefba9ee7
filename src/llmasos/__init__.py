"""LLMasOS: an operating system for LLM applications. The LLM is the CPU."""

from typing import Any

from llmasos.kernel import LLM, AsyncLLM, EngineConfig, RequestOutput, SamplingParams, StructuredOutput

__version__ = "0.1.0"
__all__ = ["LLM", "OS", "AsyncLLM", "EngineConfig", "RequestOutput", "SamplingParams", "StructuredOutput"]


def __getattr__(name: str) -> Any:
    # The OS pulls in the database and embedder stacks: imported only by those who use it.
    if name == "OS":
        from llmasos.system.os import OS

        return OS
    raise AttributeError(f"module 'llmasos' has no attribute {name!r}")

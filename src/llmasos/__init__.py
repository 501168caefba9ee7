"""LLMasOS: an operating system for LLM applications. The LLM is the CPU."""

from llmasos.kernel import LLM, AsyncLLM, EngineConfig, RequestOutput, SamplingParams, StructuredOutput

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncLLM", "EngineConfig", "RequestOutput", "SamplingParams", "StructuredOutput"]

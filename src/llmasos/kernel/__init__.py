"""The kernel: paged KV memory, the token scheduler, the model runner, sampling and the engine facades."""

from llmasos.kernel.async_llm import AsyncLLM
from llmasos.kernel.config import EngineConfig
from llmasos.kernel.engine import LLMEngine
from llmasos.kernel.llm import LLM
from llmasos.kernel.outputs import CompletionOutput, RequestOutput
from llmasos.kernel.sampling_params import SamplingParams, StructuredOutput

__all__ = ["LLM", "AsyncLLM", "CompletionOutput", "EngineConfig", "LLMEngine", "RequestOutput",
           "SamplingParams", "StructuredOutput"]

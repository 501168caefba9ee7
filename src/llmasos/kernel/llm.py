"""`LLM`: the batch facade over the engine, in the style of vLLM's offline API."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from llmasos.kernel.config import EngineConfig
from llmasos.kernel.engine import LLMEngine
from llmasos.kernel.outputs import RequestOutput
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.models.gguf import build_tokenizer, is_gguf, open_gguf
from llmasos.models.loader import load_model

Message = dict[str, str]


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer of a model directory (None if it has none) or of a GGUF file (from its metadata)."""
    from transformers import AutoTokenizer

    if is_gguf(model_dir):
        return build_tokenizer(open_gguf(model_dir).metadata)
    files = {p.name for p in model_dir.iterdir()}
    if not files & {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}:
        return None
    return AutoTokenizer.from_pretrained(str(model_dir))


def build_engine(config: EngineConfig) -> LLMEngine:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    model, source = load_model(config.model, config.dtype, config.device)
    engine = LLMEngine(model, load_tokenizer(source), config)
    engine.model_source = source
    return engine


class LLM:
    """Load a model and generate for many prompts at once with continuous batching.

    `model`: a Hugging Face directory or hub name, a GGUF file, `builtin` (the model this project trained), or
    None for the default model (SmolLM2-135M-Instruct).

    >>> llm = LLM("path/to/hf_dir", dtype="float32")
    >>> outs = llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))
    >>> outs[0].text, outs[0].token_ids, outs[0].finish_reason
    """

    def __init__(self, model: str | Path | None = None, **kwargs: Any) -> None:
        self.engine = build_engine(EngineConfig(model=str(model) if model is not None else None, **kwargs))

    def load_adapter(self, name: str, path: str | Path) -> str:
        """Load an adapter directory (LoRA, prompt or prefix tuning) to serve per request as `adapter=name`."""
        return self.engine.load_adapter(name, path)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str] | Seq[list[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None, *,
                 app_id: str = "default", priority: int = 0, weight: float = 1.0,
                 add_special_tokens: bool = True, adapter: str | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if isinstance(sampling_params, Seq):
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        ids = []
        try:
            for prompt, p in zip(prompts, params, strict=True):
                ids.append(self.engine.add_request(prompt, p, app_id=app_id, priority=priority, weight=weight,
                                                   add_special_tokens=add_special_tokens, adapter=adapter))
        except ValueError as exc:
            for rid in ids:  # all or nothing: a bad prompt leaves no half-submitted batch behind
                self.engine.abort_request(rid)
            raise ValueError(f"prompt {len(ids)}: {exc}") from exc
        final: dict[str, RequestOutput] = {}
        pending = set(ids)
        while pending:
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
                    pending.discard(out.request_id)
        return [final[r] for r in ids]

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return apply_chat_template(self.tokenizer, messages, add_generation_prompt)

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None, **kwargs: Any) -> list[RequestOutput]:
        """Generate replies to one conversation or a batch of them, through the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.apply_chat_template(c) for c in conversations]
        # The template already wrote BOS and friends: adding them again would double them (Llama 3).
        return self.generate(prompts, sampling_params, add_special_tokens=False, **kwargs)


def apply_chat_template(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model has no chat template; use generate() with a plain prompt")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs string 'role' and 'content', got {m!r}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

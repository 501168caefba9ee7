"""The engine loop: admit requests, schedule a step, run the model, sample, detokenise, finish.

`LLMEngine` is synchronous and single-threaded; `LLM` (batch) and `AsyncLLM` (streaming) drive it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmasos.kernel.block_manager import BlockManager
from llmasos.kernel.config import EngineConfig
from llmasos.kernel.detokenizer import detokenize_step, init_offsets
from llmasos.kernel.model_runner import ModelRunner, auto_kv_cache_bytes, kv_bytes_per_token, prepack_weights
from llmasos.kernel.outputs import CompletionOutput, RequestMetrics, RequestOutput
from llmasos.kernel.sampler import sample
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.kernel.scheduler import Scheduler, SchedulerConfig
from llmasos.kernel.sequence import Sequence, SequenceStatus
from llmasos.kernel.structured_output import StructuredOutputManager
from llmasos.models.decoder import DecoderLM


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    metrics: RequestMetrics
    forked: bool = False
    max_stop_len: int = 0

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs)


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    preemptions: int = 0


class LLMEngine:
    model_source: Path | None = None  # where the model was loaded from (a directory or GGUF file), if known

    def __init__(self, model: DecoderLM, tokenizer: Any, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        mcfg = model.config
        self.max_model_len = min(config.max_model_len or mcfg.max_position, mcfg.max_position)
        self.eos_token_ids = list(mcfg.eos_token_ids)
        tok_eos = getattr(tokenizer, "eos_token_id", None)
        if tok_eos is not None and tok_eos not in self.eos_token_ids:
            self.eos_token_ids.append(tok_eos)
        p = next(model.parameters())
        # Before sizing the KV pool from the free RAM, so the automatic budget sees what the copies took.
        self.prepacked_bytes = prepack_weights(model, config.prepack_weights)
        budget = config.kv_cache_memory or auto_kv_cache_bytes(p.device)
        per_block = kv_bytes_per_token(mcfg, p.dtype) * config.block_size
        # No point in more blocks than max_num_seqs full-length sequences can use.
        max_useful = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        num_blocks = min(budget // per_block, max_useful)
        if num_blocks < 2:
            raise ValueError(
                f"kv_cache_memory of {budget} bytes holds {num_blocks} blocks of {per_block} bytes; need at least 2"
            )
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.aging_seconds,
                            latency_budget=config.latency_budget, latency_window=config.latency_window),
            self.block_manager,
        )
        self.runner = ModelRunner(model, num_blocks, config.block_size)
        # A sequence can never outgrow the whole block pool: past that it ends with "length", not a stall.
        self.max_seq_tokens = min(self.max_model_len, num_blocks * config.block_size)
        self.structured = None
        self.requests: dict[str, RequestState] = {}
        self.stats = EngineStats()
        self._seq_ids = itertools.count()
        self._req_ids = itertools.count()
        self.adapters: Any = None  # adapters.serving.AdapterManager, made by the first load_adapter

    # -- adapters --------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> str:
        """Load a LoRA / prompt / prefix tuning adapter directory; requests pick it with `adapter=name`.

        Returns its kind. ValueError if it does not fit this base model or the name is taken.
        """
        if self.adapters is None:
            from llmasos.adapters.serving import AdapterManager

            self.adapters = AdapterManager(self.model)
            self.runner.adapters = self.adapters
        return self.adapters.load(name, path)

    # -- requests --------------------------------------------------------------------------------------
    def encode(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenise; chat-templated text already carries its special tokens, so pass False for it."""
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer: pass token ids instead of text")
        return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def _structured(self) -> StructuredOutputManager:
        if self.structured is None:
            if self.tokenizer is None:
                raise ValueError("structured output needs a tokenizer")
            self.structured = StructuredOutputManager(self.tokenizer, self.model.config.vocab_size, self.eos_token_ids)
        return self.structured

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, app_id: str = "default", priority: int = 0,
                    weight: float = 1.0, arrival_time: float | None = None,
                    add_special_tokens: bool = True, adapter: str | None = None) -> str:
        """Validate and queue one request. Raises ValueError on bad input; nothing is queued then.

        `adapter` names an adapter loaded with `load_adapter` (None: the base model).
        """
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
        params.validate()
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            text, ids = prompt, self.encode(prompt, add_special_tokens)
        elif isinstance(prompt, list | tuple):
            text, ids = None, list(prompt)
            vocab = self.model.config.vocab_size
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
                raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        else:
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        virtual: list[int] = []
        if adapter is not None:
            if self.adapters is None or adapter not in self.adapters:
                loaded = self.adapters.names if self.adapters is not None else []
                raise ValueError(f"unknown adapter {adapter!r}; loaded: {loaded}")
            from llmasos.adapters.serving import PLACEHOLDER_TOKEN

            # Prompt / prefix tuning: slots in front whose embeddings or K/V the adapter replaces.
            virtual = [PLACEHOLDER_TOKEN] * self.adapters.num_virtual_tokens(adapter)
        prompt_ids, ids = ids, virtual + ids
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens but the context window is {self.max_model_len}: no room to generate"
            )
        if len(ids) >= self.max_seq_tokens:
            raise ValueError(
                f"prompt has {len(ids)} tokens but the KV cache holds {self.max_seq_tokens}: raise kv_cache_memory"
            )
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority must be an integer (lower runs first)")
        if not isinstance(weight, int | float) or not weight > 0:
            raise ValueError("weight must be a positive number")
        if params.structured is not None:
            self._structured().validate(params.structured)
        request_id = request_id if request_id is not None else f"req-{next(self._req_ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        seq = self._new_seq(request_id, 0, list(ids), len(ids), params, app_id, priority, weight, arrival, adapter)
        self.requests[request_id] = RequestState(
            request_id, text, list(prompt_ids), params, [seq], RequestMetrics(arrival),
            max_stop_len=max((len(s) for s in params.stop), default=0),
        )
        self.scheduler.add(seq)
        return request_id

    def _new_seq(self, request_id, index, token_ids, num_prompt, params, app_id, priority, weight, arrival,  # noqa: ANN001
                 adapter=None) -> Sequence:
        seq = Sequence(next(self._seq_ids), request_id, index, token_ids, num_prompt, params, app_id, priority,
                       float(weight), arrival, adapter=adapter)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(params.seed + index)
        if params.structured is not None:
            seq.matcher = self._structured().matcher(params.structured)
        init_offsets(seq)
        return seq

    def set_latency_sensitive(self, app_id: str, priority: int, enabled: bool = True) -> None:
        """Declare (or undeclare) an interactive app of the given priority. While it is declared, prompts of
        less urgent apps are computed in chunks of at most `latency_budget` tokens per step, so its requests
        never arrive during a long step - at some cost in those apps' prompt throughput."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority must be an integer (lower runs first)")
        if enabled:
            self.scheduler.register_latency_sensitive(app_id, priority)
        else:
            self.scheduler.unregister_latency_sensitive(app_id)

    def renice(self, request_id: str, priority: int) -> bool:
        """Change a live request's priority (lower runs first); the next step ranks it anew. False if unknown."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority must be an integer (lower runs first)")
        state = self.requests.get(request_id)
        if state is None:
            return False
        for seq in state.seqs:
            seq.priority = priority
            self.scheduler.last_seen[priority] = max(self.scheduler.last_seen.get(priority, 0.0), time.monotonic())
        return True

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks; returns its final output, or None if unknown."""
        state = self.requests.get(request_id)
        if state is None:
            return None
        for seq in state.seqs:
            if not seq.is_finished:
                self._finish(seq, "abort")
        out = self._make_output(state)
        del self.requests[request_id]
        return out

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # -- the step --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; returns outputs for the requests that progressed or finished."""
        sched = self.scheduler.schedule()
        self.stats.preemptions += len(sched.preempted)
        if sched.is_empty:
            return []
        self.stats.steps += 1
        self.runner.copy_blocks(sched.copies)
        logits, to_sample = self.runner.execute(sched)
        for seq, n in [(s, 1) for s in sched.decodes] + sched.prefills:
            old = seq.num_computed_tokens
            seq.num_computed_tokens += n
            self.block_manager.commit_computed(seq, old)
            self.scheduler.account(seq, n)
            if seq.num_computed_tokens <= seq.num_prompt_tokens:
                self.stats.prompt_tokens += n
        touched: dict[str, RequestState] = {}
        if logits is not None:
            logits, to_sample = self._fork_for_n(logits, to_sample)
            masks = None
            if any(s.matcher is not None for s in to_sample):
                masks = self._structured().masks([s.matcher for s in to_sample], logits.shape[-1], logits.device)
            now = time.monotonic()
            for seq, res in zip(to_sample, sample(logits, to_sample, self.eos_token_ids, masks), strict=True):
                self._append(seq, res, now)
                touched[seq.request_id] = self.requests[seq.request_id]
        outputs = []
        for state in touched.values():
            outputs.append(self._make_output(state))
            if state.finished:
                del self.requests[state.request_id]
        return outputs

    def _fork_for_n(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[torch.Tensor, list[Sequence]]:
        """At the end of a prompt with n > 1, fork n-1 children that share its blocks (copy-on-write)."""
        rows, out = [], []
        for i, seq in enumerate(seqs):
            rows.append(i)
            out.append(seq)
            state = self.requests[seq.request_id]
            if state.params.n > 1 and not state.forked:
                state.forked = True
                for k in range(1, state.params.n):
                    child = self._new_seq(seq.request_id, k, list(seq.token_ids), seq.num_prompt_tokens,
                                          seq.params, seq.app_id, seq.priority, seq.weight, seq.arrival_time,
                                          seq.adapter)
                    self.block_manager.fork(seq, child)
                    self.scheduler.add_running(child)
                    state.seqs.append(child)
                    rows.append(i)
                    out.append(child)
        if len(out) == len(seqs):
            return logits, seqs
        return logits[torch.tensor(rows, device=logits.device)], out

    def _append(self, seq: Sequence, res: Any, now: float) -> None:
        state = self.requests[seq.request_id]
        seq.token_ids.append(res.token_id)
        self.stats.generated_tokens += 1
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = now
        p = seq.params
        if res.top_logprobs is not None:
            seq.logprobs.append(res.top_logprobs)
            seq.cumulative_logprob += res.logprob
        if seq.matcher is not None:
            seq.matcher.consume_token(res.token_id)
        if self.tokenizer is not None:
            detokenize_step(self.tokenizer, seq)
        tok = res.token_id
        if tok in self.eos_token_ids and not p.ignore_eos:
            return self._finish(seq, "stop", tok)
        if tok in p.stop_token_ids:
            return self._finish(seq, "stop", tok)
        if seq.matcher is not None and seq.matcher.is_stopped():
            return self._finish(seq, "stop")
        if p.stop and self._check_stop_strings(seq, state.max_stop_len):
            return None
        if p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
            return self._finish(seq, "length")
        if len(seq.token_ids) >= self.max_seq_tokens:
            return self._finish(seq, "length")
        return None

    def _check_stop_strings(self, seq: Sequence, max_len: int) -> bool:
        # Only the tail can contain a stop string that the newest token completed.
        window_start = max(0, len(seq.text) - max_len - 16)
        best = None
        for s in seq.params.stop:
            i = seq.text.find(s, window_start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return False
        i, s = best
        seq.text = seq.text[: i + len(s)] if seq.params.include_stop_str_in_output else seq.text[:i]
        self._finish(seq, "stop", s)
        return True

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        self.scheduler.remove(seq)
        seq.status = SequenceStatus.FINISHED
        state = self.requests.get(seq.request_id)
        if state is not None and state.finished:
            state.metrics.finished_time = time.monotonic()

    def _make_output(self, state: RequestState) -> RequestOutput:
        completions = []
        for seq in sorted(state.seqs, key=lambda s: s.index):
            # While a stop string might still be forming, hold its possible prefix back from streams.
            safe = len(seq.text) if seq.is_finished else max(seq.emitted_text_len, len(seq.text) - max(state.max_stop_len - 1, 0))
            delta_text = seq.text[seq.emitted_text_len : safe]
            seq.emitted_text_len = safe
            out_ids = seq.output_token_ids
            delta_ids = out_ids[seq.emitted_tokens :]
            seq.emitted_tokens = len(out_ids)
            completions.append(CompletionOutput(
                index=seq.index, text=seq.text, token_ids=list(out_ids), finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason, logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
                cumulative_logprob=seq.cumulative_logprob if seq.params.logprobs is not None else None,
                delta_text=delta_text, delta_token_ids=delta_ids,
            ))
        m = state.metrics
        m.num_cached_prompt_tokens = state.seqs[0].num_cached_prompt_tokens
        m.num_preemptions = sum(s.num_preemptions for s in state.seqs)
        return RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, completions,
                             state.finished, m)

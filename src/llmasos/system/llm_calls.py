"""The LLM system calls: `llm.chat` (stateless messages, or a memory-managed session), `llm.complete`, the tool
loop, and the session summaries. Each generation is a process: admitted against quotas, scheduled by the
kernel under the app's id, priority and weight, killable and reniceable while it runs."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmasos.kernel.sampling_params import SamplingParams, StructuredOutput
from llmasos.kernel.upstream_pool import UpstreamUnavailable
from llmasos.system.errors import ContextTooLong, InvalidRequest, Overloaded, SystemCallError
from llmasos.system.guards.injection import UNTRUSTED_NOTICE, strip_exfiltration, wrap_untrusted
from llmasos.system.guards.pii import apply_policy
from llmasos.system.memory.stores import Summary
from llmasos.system.memory.summarizer import pending_turns, summary_prompt
from llmasos.system.processes import Process, ProcState
from llmasos.system.syscalls import CallContext, SystemCalls
from llmasos.system.tools.registry import Tool
from llmasos.system.validate import check_name, check_text

# The handler process an LLM call runs under (set by the OS around app handlers): kill the handler, kill these.
current_pid: contextvars.ContextVar[int | None] = contextvars.ContextVar("llmasos_current_pid", default=None)

MAX_MESSAGES = 1000
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "logprobs", "n", "min_tokens", "ignore_eos", "logit_bias")


@dataclass
class Turn:
    """One chat call's working state."""

    messages: list[dict]
    trusted: list[str] = field(default_factory=list)  # texts from the user and the app (for link stripping)
    untrusted: bool = False  # untrusted content (archival items, tool output) is in the prompt
    memory: dict | None = None
    flags: dict = field(default_factory=dict)
    session_msg_id: int | None = None
    prompt_ids: list[int] = field(default_factory=list)  # set when the memory manager built the prompt


class LLMCalls:
    def __init__(self, syscalls: SystemCalls, summarize_share: float = 0.15, keep_share: float = 0.5,
                 summarize_after: int = 256) -> None:
        self.sc = syscalls
        self.s = syscalls.s
        self.summarize_share, self.keep_share, self.summarize_after = summarize_share, keep_share, summarize_after
        self.background: set[asyncio.Task] = set()
        self._summarizing: set[tuple[str, str]] = set()
        syscalls.register("llm.chat", self.chat)
        syscalls.register("llm.complete", self.complete)
        syscalls.register("memory.summarize", self.summarize)
        syscalls.register("llm.chat:stream", self.chat_stream)
        syscalls.register("llm.complete:stream", self.complete_stream)

    # -- generation as a process -----------------------------------------------------------------------
    def _params(self, cc: CallContext, max_tokens: Any, opts: dict, structured: StructuredOutput | None) -> SamplingParams:
        unknown = set(opts) - set(SAMPLING_KEYS)
        if unknown:
            raise InvalidRequest(f"unknown sampling options: {sorted(unknown)}")
        try:
            return SamplingParams(max_tokens=max_tokens, structured=structured, **opts)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc)) from exc

    def _priority(self, cc: CallContext, priority: Any) -> int:
        if priority is None:
            return cc.manifest.priority
        if not isinstance(priority, int) or isinstance(priority, bool) or not -20 <= priority <= 19:
            raise InvalidRequest("priority must be an integer in [-20, 19]", param="priority")
        if priority < cc.manifest.priority and not cc.principal.is_admin:
            raise InvalidRequest(f"priority {priority} is more urgent than the app's manifest allows "
                                 f"({cc.manifest.priority})", param="priority")
        return priority

    def _window(self) -> int:
        if self.s.llm is None:
            raise Overloaded("this OS was booted without a model")
        return self.s.window

    async def generate(self, cc: CallContext, prompt: list[int], params: SamplingParams, *, kind: str = "llm",
                       session: str | None = None, priority: int | None = None, memory: dict | None = None,
                       proc_out: list | None = None) -> AsyncIterator[Any]:
        """Run one kernel request (the prompt's token ids) as a process, yielding the kernel's outputs; the
        process ends with it."""
        window = self._window()
        n_in = len(prompt)
        if n_in + (params.max_tokens or 1) > window:
            raise ContextTooLong(f"the prompt has {n_in} tokens and max_tokens is {params.max_tokens}: more than "
                                 f"the {window}-token context window", param="messages")
        ledger = self.s.ledger
        used = None
        if ledger is not None and cc.manifest.quotas.tokens_per_minute is not None and kind == "llm":
            used = await asyncio.to_thread(ledger.used_last_minute, cc.app)
        proc = self.s.procs.spawn(cc.app, str(cc.principal), kind, quotas=cc.manifest.quotas, session=session,
                                  parent=current_pid.get(), priority=self._priority(cc, priority), tokens_in=n_in,
                                  tokens_used=used)
        proc.memory = memory
        if proc_out is not None:
            proc_out.append(proc)
        rid = proc.request_id = f"pid-{proc.pid}"
        self.s.procs.killers[proc.pid] = lambda: self.s.llm.abort(rid)
        self.s.procs.renicers[proc.pid] = lambda p: self.s.llm.renice(rid, p)
        state = ProcState.FINISHED
        error = None
        try:
            async for out in self.s.llm.generate(prompt, params, request_id=rid, app_id=cc.app, priority=proc.priority,
                                                 weight=cc.manifest.weight, add_special_tokens=False):
                if proc.first_token_at is None and any(c.token_ids for c in out.outputs):
                    proc.first_token_at = time.time()
                    self.s.procs.set_state(proc, ProcState.RUNNING)
                proc.tokens_out = sum(len(c.token_ids) for c in out.outputs)
                proc.preemptions = out.metrics.num_preemptions
                yield out
        except ValueError as exc:
            state, error = ProcState.FAILED, str(exc)
            raise InvalidRequest(str(exc)) from exc
        except UpstreamUnavailable as exc:
            state, error = ProcState.FAILED, str(exc)
            raise Overloaded(str(exc)) from exc
        except BaseException as exc:
            state, error = ProcState.FAILED, f"{type(exc).__name__}: {exc}"
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                state = ProcState.KILLED
            raise
        finally:
            self.s.procs.charge(proc, proc.tokens_in + proc.tokens_out)
            if ledger is not None:  # written off the loop; the finally of a closed stream cannot await
                asyncio.get_running_loop().run_in_executor(None, ledger.charge, proc.app,
                                                           proc.tokens_in + proc.tokens_out)
            self.s.procs.finish(proc, state, error)

    async def _final(self, cc: CallContext, prompt: list[int], params: SamplingParams,
                     **kw: Any) -> tuple[Any, Process]:
        procs: list[Process] = []
        final = None
        async for out in self.generate(cc, prompt, params, proc_out=procs, **kw):
            final = out
        return final, procs[0]

    # -- prompts ---------------------------------------------------------------------------------------
    def _encode_raw(self, prompt: str) -> list[int]:
        """A plain completion prompt, with the model's BOS and friends as the kernel would add them."""
        self._window()
        return self.s.llm.engine.encode(prompt, add_special_tokens=True)

    def _check_messages(self, messages: Any) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list of {role, content}", param="messages")
        if len(messages) > MAX_MESSAGES:
            raise InvalidRequest(f"at most {MAX_MESSAGES} messages", param="messages")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise InvalidRequest(f"messages[{i}] needs a role of system, user, assistant or tool", param="messages")
            content = m.get("content") or ""
            check_text(content, f"messages[{i}].content")
            out.append({"role": m["role"], "content": content})
        return out

    def _pii_in(self, cc: CallContext, text: str) -> str:
        policy = cc.manifest.pii
        return apply_policy(text, policy.input, policy.kinds, where="the message")[0]

    def _turn(self, cc: CallContext, messages: Any, session: Any, message: Any, system: Any, max_tokens: int) -> Turn:
        if (messages is None) == (message is None):
            raise InvalidRequest("give either messages, or a session and a message")
        sys_prompt = cc.manifest.system_prompt if system is None else check_text(system, "system")
        if message is not None:
            self.sc.check(cc, "memory.read")
            self.sc.check(cc, "memory.write")
            check_name(session, "session_id", 128)
            text = self._pii_in(cc, check_text(message, "message", allow_empty=False))
            mid = self.s.recall.append(cc.app, session, "user", text, user=cc.user)
            ctx = self.s.context.build(cc.app, session, text, window=self._window(), max_tokens=max_tokens,
                                       user=cc.user, system_prompt=sys_prompt, before_id=mid)
            t = Turn(ctx.messages, [text, sys_prompt], ctx.report.archival_items > 0, ctx.report.as_dict())
            t.session_msg_id, t.prompt_ids = mid, list(ctx.prompt_ids)
            return t
        msgs = self._check_messages(messages)
        for m in msgs:
            if m["role"] == "user":
                m["content"] = self._pii_in(cc, m["content"])
        if sys_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": sys_prompt})
        tool_msgs = [m for m in msgs if m["role"] == "tool"]
        for m in tool_msgs:  # tool output handed back by a client is untrusted content like ours
            m["role"], m["content"] = "user", wrap_untrusted(m["content"], "tool")
        trusted = [m["content"] for m in msgs if m["role"] in ("user", "system")]
        return Turn(msgs, trusted, bool(tool_msgs))

    def _tool_list(self, cc: CallContext, tools: Any) -> list[Tool]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise InvalidRequest("tools must be a list of tool names", param="tools")
        out = []
        for t in tools:
            name = t if isinstance(t, str) else (t.get("function", {}) or {}).get("name") if isinstance(t, dict) else None
            if not isinstance(name, str):
                raise InvalidRequest("each tool must be a tool name or an OpenAI function tool", param="tools")
            tool = self.s.tools.get(name, cc.app)
            self.sc.check(cc, tool.permission)
            out.append(tool)
        return out

    # -- llm.chat --------------------------------------------------------------------------------------
    async def chat(self, cc: CallContext, *, messages: Any = None, session: Any = None, message: Any = None,
                   system: Any = None, max_tokens: int | None = 256, tools: Any = None, functions: Any = None,
                   tool_choice: Any = "auto", run_tools: bool = False, max_steps: int = 4, approve: Any = None,
                   response_format: Any = None, priority: Any = None, parallel_tool_calls: bool = True,
                   **opts: Any) -> tuple[dict, dict]:
        # Everything is validated before the turn is stored: a bad option must not leave half a turn behind.
        tool_objs = self._tool_list(cc, tools) + _client_functions(functions)
        structured = _response_format(response_format)
        tool_params = None
        if tool_objs and tool_choice != "none":
            tool_params = self._params(cc, max_tokens, opts, _tool_schema(tool_objs, tool_choice,
                                                                          bool(parallel_tool_calls)))
        plain_params = self._params(cc, max_tokens, opts, structured)
        self._priority(cc, priority)
        if not isinstance(max_steps, int) or not 1 <= max_steps <= 16:
            raise InvalidRequest("max_steps must be an integer in [1, 16]", param="max_steps")
        if approve is not None and not (isinstance(approve, list) and all(isinstance(a, str) for a in approve)):
            raise InvalidRequest("approve must be a list of tool names", param="approve")
        # Storing the turn and building the context embed and query: off the event loop, which streams others.
        turn = await asyncio.to_thread(self._turn, cc, messages, session, message, system, max_tokens or 256)
        steps: list[dict] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        pids: list[int] = []
        approved = set(approve or [])
        client_names = {t.name for t in tool_objs if t.owner == CLIENT}
        while True:
            use_tools = tool_params is not None and len(steps) < max_steps
            msgs = _with_tools(turn.messages, tool_objs, tool_choice) if use_tools else turn.messages
            params = tool_params if use_tools else plain_params
            # The memory manager already counted its prompt exactly: reuse those ids unless tools changed it.
            ids = turn.prompt_ids if msgs is turn.messages and turn.prompt_ids else self.s.codec.encode(
                self.s.codec.render(msgs))
            final, proc = await self._final(cc, ids, params, session=session, priority=priority, memory=turn.memory)
            pids.append(proc.pid)
            usage["prompt_tokens"] += len(final.prompt_token_ids)
            usage["completion_tokens"] += sum(len(c.token_ids) for c in final.outputs)
            choices = [self._finish_text(cc, turn, c.text) for c in final.outputs]
            calls = _parse_tool_calls(final.outputs[0].text) if use_tools else None
            if calls is None and use_tools:
                choices[0] = _content_of(choices[0])
            # The client's own functions are the client's to run: hand their calls back.
            if calls is None or not run_tools or any(c["name"] in client_names for c in calls):
                break
            turn.messages = turn.messages + [{"role": "assistant", "content": json.dumps({"tool_calls": calls})}]
            for call in calls:
                steps.append(await self._run_tool(cc, turn, call, session, approved))
        reasons = [c.finish_reason for c in final.outputs]
        if calls is not None:
            reasons[0] = "tool_calls"
        result = {"pid": pids[-1], "pids": pids, "text": choices[0], "choices": choices,
                  "finish_reason": reasons[0], "finish_reasons": reasons,
                  "tool_calls": calls, "steps": steps, "usage": usage, "memory": turn.memory,
                  "logprobs": self._logprobs(final, opts)}
        if session is not None and message is not None:
            await asyncio.to_thread(self.s.recall.append, cc.app, session, "assistant", choices[0], user=cc.user)
            self._schedule_summary(cc, session)
        audit = {"_audit": True, "pid": pids[-1], "tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                 "flags": turn.flags or None}
        return result, audit

    def _finish_text(self, cc: CallContext, turn: Turn, text: str) -> str:
        policy = cc.manifest.pii
        text = apply_policy(text, policy.output, policy.kinds, where="the reply")[0]
        if turn.untrusted:
            text, removed = strip_exfiltration(text, turn.trusted)
            if removed:
                turn.flags["stripped_urls"] = len(removed)
        return text

    async def _run_tool(self, cc: CallContext, turn: Turn, call: dict, session: Any, approved: set) -> dict:
        name, args = call["name"], call.get("arguments") or {}
        tool = self.s.tools.get(name, cc.app)
        # A side effect proposed after untrusted content entered this turn needs the user's or app's consent:
        # the content may have asked for it.
        needs = tool.sensitive and name not in cc.manifest.auto_approve
        needs = needs or (tool.side_effects and turn.untrusted)
        if needs and name not in approved:
            turn.flags.setdefault("needs_approval", []).append(name)
            content = f"Not run: {name} needs the user's approval."
            turn.messages = turn.messages + [{"role": "user", "content": f"Tool {name}: {content}"}]
            return {"tool": name, "arguments": args, "ran": False, "content": content}
        try:
            res = await self.sc.call(cc.principal, "tools.call", {"name": name, "arguments": args, "session": session},
                                     app=cc.app if cc.principal.is_admin else None)
            content = res["content"]
            if res["untrusted"]:
                turn.untrusted = True
                if res["injection"]:
                    turn.flags.setdefault("injection", []).extend(res["injection"])
                content = wrap_untrusted(content, f"tool:{name}")
        except SystemCallError as exc:
            res, content = {"untrusted": False}, f"error: {exc.message}"
        note = UNTRUSTED_NOTICE + "\n" if res.get("untrusted") else ""
        turn.messages = turn.messages + [{"role": "user", "content": f"{note}Tool {name} returned:\n{content}"}]
        return {"tool": name, "arguments": args, "ran": True, "content": content}

    async def chat_stream(self, cc: CallContext, extra: dict, *, messages: Any = None, session: Any = None,
                          message: Any = None, system: Any = None, max_tokens: int | None = 256,
                          response_format: Any = None, priority: Any = None, **opts: Any) -> AsyncIterator[dict]:
        """Text deltas as they are generated; the last item carries finish_reason, usage and the pid. (Tools are
        not streamed; with an output PII policy other than allow the reply comes as one delta, after the
        guard has seen all of it.)"""
        if "tools" in opts or "run_tools" in opts or "functions" in opts:
            raise InvalidRequest("tools are not supported with stream; call without stream", param="tools")
        if opts.get("n", 1) != 1:
            raise InvalidRequest("n > 1 is not supported with stream", param="n")
        params = self._params(cc, max_tokens, opts, _response_format(response_format))
        self._priority(cc, priority)
        turn = await asyncio.to_thread(self._turn, cc, messages, session, message, system, max_tokens or 256)
        hold = cc.manifest.pii.output != "allow" or turn.untrusted
        procs: list[Process] = []
        final = None
        ids = turn.prompt_ids or self.s.codec.encode(self.s.codec.render(turn.messages))
        async for out in self.generate(cc, ids, params, session=session,
                                       priority=priority, memory=turn.memory, proc_out=procs):
            final = out
            c = out.outputs[0]
            if not hold and (c.delta_text or c.delta_token_ids):
                yield {"pid": procs[0].pid, "delta": c.delta_text, **self._delta_logprobs(c, opts)}
        text = self._finish_text(cc, turn, final.outputs[0].text)
        if hold:
            yield {"pid": procs[0].pid, "delta": text}
        usage = {"prompt_tokens": len(final.prompt_token_ids), "completion_tokens": len(final.outputs[0].token_ids)}
        if session is not None and message is not None:
            await asyncio.to_thread(self.s.recall.append, cc.app, session, "assistant", text, user=cc.user)
            self._schedule_summary(cc, session)
        extra.update(pid=procs[0].pid, tokens=usage["prompt_tokens"] + usage["completion_tokens"], flags=turn.flags or None)
        yield {"pid": procs[0].pid, "delta": "", "finish_reason": final.outputs[0].finish_reason, "usage": usage,
               "text": text, "memory": turn.memory}

    # -- llm.complete ----------------------------------------------------------------------------------
    def _prompt_ids(self, cc: CallContext, prompt: Any) -> list[int]:
        """A completion prompt: text (the PII guard applies), or token ids as they are (vLLM-style clients, and
        our own upstream driver, send those)."""
        if isinstance(prompt, list):
            if not prompt or len(prompt) > self._window() or not all(
                    isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
                raise InvalidRequest("a token-id prompt must be a non-empty list of non-negative integers, no "
                                     "longer than the context window", param="prompt")
            return list(prompt)
        check_text(prompt, "prompt", allow_empty=False)
        return self._encode_raw(self._pii_in(cc, prompt))

    async def complete(self, cc: CallContext, *, prompt: Any, max_tokens: int | None = 16, priority: Any = None,
                       response_format: Any = None, **opts: Any) -> tuple[dict, dict]:
        ids = self._prompt_ids(cc, prompt)
        params = self._params(cc, max_tokens, opts, _response_format(response_format))
        final, proc = await self._final(cc, ids, params, priority=priority)
        policy = cc.manifest.pii
        texts = [apply_policy(c.text, policy.output, policy.kinds, where="the completion")[0] for c in final.outputs]
        usage = {"prompt_tokens": len(final.prompt_token_ids),
                 "completion_tokens": sum(len(c.token_ids) for c in final.outputs)}
        return ({"pid": proc.pid, "text": texts[0], "choices": texts, "finish_reason": final.outputs[0].finish_reason,
                 "finish_reasons": [c.finish_reason for c in final.outputs], "usage": usage,
                 "logprobs": self._logprobs(final, opts)},
                {"_audit": True, "pid": proc.pid, "tokens": usage["prompt_tokens"] + usage["completion_tokens"]})

    async def complete_stream(self, cc: CallContext, extra: dict, *, prompt: Any, max_tokens: int | None = 16,
                              priority: Any = None, response_format: Any = None,
                              **opts: Any) -> AsyncIterator[dict]:
        ids = self._prompt_ids(cc, prompt)
        params = self._params(cc, max_tokens, opts, _response_format(response_format))
        procs: list[Process] = []
        final = None
        async for out in self.generate(cc, ids, params, priority=priority, proc_out=procs):
            final = out
            c = out.outputs[0]
            if c.delta_text or c.delta_token_ids:
                yield {"pid": procs[0].pid, "delta": c.delta_text, **self._delta_logprobs(c, opts)}
        usage = {"prompt_tokens": len(final.prompt_token_ids), "completion_tokens": len(final.outputs[0].token_ids)}
        extra.update(pid=procs[0].pid, tokens=usage["prompt_tokens"] + usage["completion_tokens"])
        yield {"pid": procs[0].pid, "delta": "", "finish_reason": final.outputs[0].finish_reason, "usage": usage}

    # -- log-probabilities -----------------------------------------------------------------------------
    def _token_logprobs(self, token_ids: list[int], logprobs: list[dict[int, float]], top: int) -> list[dict]:
        """OpenAI's shape: per generated token its text, log-probability, UTF-8 bytes and the `top` most likely
        alternatives (JSON-safe, unlike the kernel's id-keyed dicts)."""
        tok = self.s.llm.engine.tokenizer

        def entry(tid: int, lp: float) -> dict:
            text = tok.decode([tid])
            return {"token": text, "id": tid, "logprob": max(float(lp), -9999.0), "bytes": list(text.encode())}

        out = []
        for tid, lps in zip(token_ids, logprobs, strict=False):
            alts = sorted(lps.items(), key=lambda kv: -kv[1])[:top]
            out.append({**entry(tid, lps.get(tid, float("-inf"))), "top_logprobs": [entry(i, lp) for i, lp in alts]})
        return out

    def _logprobs(self, final: Any, opts: dict) -> list[list[dict]] | None:
        top = opts.get("logprobs")
        if top is None:
            return None
        return [self._token_logprobs(c.token_ids, c.logprobs or [], top) for c in final.outputs]

    def _delta_logprobs(self, c: Any, opts: dict) -> dict:
        top = opts.get("logprobs")
        if top is None or not c.delta_token_ids:
            return {}
        n = len(c.delta_token_ids)
        return {"logprobs": self._token_logprobs(c.delta_token_ids, (c.logprobs or [])[-n:], top)}

    # -- summaries -------------------------------------------------------------------------------------
    def _schedule_summary(self, cc: CallContext, session: str) -> None:
        key = (cc.app, session)
        if key in self._summarizing:
            return
        self._summarizing.add(key)

        async def run() -> None:
            try:
                await self.summarize(cc, session=session)
            except Exception:  # a failed summary only leaves the turns unsummarised for now
                pass
            finally:
                self._summarizing.discard(key)

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def summarize(self, cc: CallContext, *, session: str, force: bool = False) -> tuple[dict, dict]:
        """Fold the turns that left the verbatim window into the session's summary (several LLM calls if many)."""
        check_name(session, "session_id", 128)
        window = self._window()
        words = max(16, int(window * self.summarize_share * 0.6))
        keep = int((window - 256) * self.keep_share) if window > 512 else int(window * self.keep_share * 0.5)
        folded, pids = 0, []
        while True:
            summary, pending = await asyncio.to_thread(pending_turns, self.s.recall, self.s.summaries, cc.app, session,
                                                       keep)
            if not pending or (not force and sum(m.tokens for m in pending) < self.summarize_after):
                break
            max_out = max(16, int(window * self.summarize_share))
            msgs, last = summary_prompt(self.s.codec, summary, pending, window - max_out - 8, words)
            params = SamplingParams(max_tokens=max_out, temperature=0.0)
            final, proc = await self._final(cc, self.s.codec.encode(self.s.codec.render(msgs)), params, kind="summary",
                                            session=session,
                                            priority=min(cc.manifest.priority + 5, 19))
            pids.append(proc.pid)
            text = final.outputs[0].text.strip() or (summary.text if summary else "")
            self.s.summaries.set(cc.app, session, Summary(text, self.s.codec.count(text), last))
            folded += sum(1 for m in pending if m.id <= last)
            force = False
        return {"folded": folded, "pids": pids}, {"_audit": True, "pid": pids[-1] if pids else None}


# -- tool calls through structured output --------------------------------------------------------------------

def _response_format(rf: Any) -> StructuredOutput | None:
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequest("response_format.type must be text, json_object or json_schema", param="response_format")
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return StructuredOutput(json_object=True)
    schema = (rf.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON Schema object", param="response_format")
    return StructuredOutput(json=schema)


CLIENT = "<client>"  # owner of a function the API client declared (it runs it, not the OS)


def _client_functions(functions: Any) -> list[Tool]:
    """Functions the API client declares (OpenAI `tools`): offered to the model, their calls handed back."""
    if functions is None:
        return []
    if not isinstance(functions, list) or len(functions) > 128:
        raise InvalidRequest("functions must be a list of at most 128 {name, description, parameters}",
                             param="tools")
    out, seen = [], set()
    for f in functions:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise InvalidRequest("each function needs a name", param="tools")
        if f["name"] in seen:
            raise InvalidRequest(f"function {f['name']!r} is declared twice", param="tools")
        seen.add(f["name"])
        params = f.get("parameters") or {"type": "object", "properties": {}}
        out.append(Tool(f["name"], str(f.get("description") or ""), params, fn=None, owner=CLIENT,  # type: ignore[arg-type]
                        untrusted_output=False))
    return out


def _with_tools(messages: list[dict], tools: list[Tool], choice: Any) -> list[dict]:
    lines = [f"- {t.name}: {t.description} Arguments (JSON Schema): {json.dumps(t.parameters)}" for t in tools]
    how = ('To call tools reply with {"tool_calls": [{"name": ..., "arguments": {...}}]}. '
           'To answer directly reply with {"content": "..."}.')
    if choice == "required" or isinstance(choice, dict):
        how = 'Reply with {"tool_calls": [{"name": ..., "arguments": {...}}]}.'
    text = "You can use these tools:\n" + "\n".join(lines) + "\n" + how
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = out[0]["content"] + "\n\n" + text
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def _tool_schema(tools: list[Tool], choice: Any, parallel: bool = True) -> StructuredOutput:
    """A JSON Schema that admits only well-formed calls to the offered tools (or, with auto, a plain answer):
    the kernel's grammar makes even a small model emit a valid call. A named function is called once."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        tools = [t for t in tools if t.name == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    elif choice not in ("auto", "required", "none"):
        raise InvalidRequest("tool_choice must be auto, none, required or a named function", param="tool_choice")
    one = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    most = 1 if isinstance(choice, dict) or not parallel else 4
    calls = {"type": "object", "properties": {"tool_calls": {"type": "array", "minItems": 1, "maxItems": most,
                                                             "items": {"anyOf": one}}},
             "required": ["tool_calls"], "additionalProperties": False}
    if choice == "auto":
        answer = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"],
                  "additionalProperties": False}
        return StructuredOutput(json={"anyOf": [calls, answer]})
    return StructuredOutput(json=calls)


def _parse_tool_calls(text: str) -> list[dict] | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    calls = obj.get("tool_calls") if isinstance(obj, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    return [{"name": c.get("name"), "arguments": c.get("arguments") or {}} for c in calls if isinstance(c, dict)]


def _content_of(text: str) -> str:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text
    return obj["content"] if isinstance(obj, dict) and isinstance(obj.get("content"), str) else text

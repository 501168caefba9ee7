"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, and the
one-field /predict. Each is a system call of the caller's app: permission-checked, scheduled, audited."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends

from llmasos.server.auth import Caller
from llmasos.server.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    PredictRequest,
)
from llmasos.server.sse import event, sse_response
from llmasos.server.state import ServerState
from llmasos.system.errors import InvalidRequest, NotFound

SAMPLING_FIELDS = ("temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty", "top_k",
                   "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "priority")


def openai_router(st: ServerState) -> APIRouter:
    r = APIRouter(tags=["OpenAI"])
    caller = st.auth

    @r.get("/v1/models")
    async def list_models(who: Caller = Depends(caller)) -> dict:
        created = int(st.started)
        return {"object": "list", "data": [
            {"id": st.chat_model, "object": "model", "created": created, "owned_by": "llmasos",
             "max_model_len": st.os.services.window},
            {"id": st.embed_model, "object": "model", "created": created, "owned_by": "llmasos",
             "dimensions": st.os.embedder.dim}]}

    @r.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, who: Caller = Depends(caller)) -> dict:
        for m in (await list_models(who))["data"]:
            if m["id"] == model_id:
                return m
        raise NotFound(f"the model {model_id!r} does not exist", code="model_not_found", param="model")

    @r.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, who: Caller = Depends(caller)) -> Any:
        st.check_chat_model(body.model)
        args = chat_args(body)
        st.admit()
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream and not body.tools:
            if body.n != 1:
                raise InvalidRequest("n > 1 is not supported with stream", param="n")
            return await _stream_chat(st, who, args, body, rid, created)
        out = await st.call(who, "llm.chat", args)
        resp = chat_response(out, body.model, rid, created)
        if body.stream:  # tool calls come whole: one chunk holds them
            return await sse_response(_one(resp), lambda r: [event(c) for c in _as_chunks(r, body)])
        return resp

    @r.post("/v1/completions")
    async def completions(body: CompletionRequest, who: Caller = Depends(caller)) -> Any:
        st.check_chat_model(body.model)
        if body.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if body.echo and body.logprobs is not None:
            raise InvalidRequest("echo with logprobs is not supported", param="echo")
        prompts: list = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]  # one prompt as token ids
        if body.echo and not isinstance(prompts[0], str):
            raise InvalidRequest("echo needs a text prompt", param="echo")
        if not prompts or len(prompts) > 64:
            raise InvalidRequest("prompt must be a string or a list of 1 to 64 strings", param="prompt")
        args = _sampling(body)
        args["max_tokens"] = body.max_tokens
        if body.logprobs is not None:
            args["logprobs"] = body.logprobs
        if body.response_format is not None:
            args["response_format"] = body.response_format
        st.admit()
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise InvalidRequest("stream takes one prompt and n=1", param="stream")
            return await _stream_completion(st, who, {**args, "prompt": prompts[0]}, body, rid, created)
        outs = await asyncio.gather(*[st.call(who, "llm.complete", {**args, "prompt": p}) for p in prompts])
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for pi, (prompt, out) in enumerate(zip(prompts, outs, strict=True)):
            usage["prompt_tokens"] += out["usage"]["prompt_tokens"]
            usage["completion_tokens"] += out["usage"]["completion_tokens"]
            for j, text in enumerate(out["choices"]):
                lp = out["logprobs"][j] if out.get("logprobs") else None
                choices.append({"index": pi * body.n + j, "text": (prompt + text) if body.echo else text,
                                "logprobs": legacy_logprobs(lp) if lp is not None else None,
                                "finish_reason": out["finish_reasons"][j]})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": choices, "usage": usage}

    @r.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, who: Caller = Depends(caller)) -> dict:
        if body.model != st.embed_model:
            if body.model == st.chat_model:
                raise InvalidRequest(f"{body.model!r} is a chat model; the embedding model is {st.embed_model!r}",
                                     param="model", code="model_not_supported")
            raise NotFound(f"the model {body.model!r} does not exist", param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > 2048:
            raise InvalidRequest("input must be a string or a list of 1 to 2048 strings", param="input")
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("token-id input is not supported: send the text", param="input")
        if body.dimensions is not None and body.dimensions != st.os.embedder.dim:
            raise InvalidRequest(f"{st.embed_model} has {st.os.embedder.dim} dimensions; other sizes are not "
                                 f"supported", param="dimensions")
        out = await st.call(who, "embed", {"texts": texts})
        data = []
        for i, vec in enumerate(out["embeddings"]):
            emb: Any = vec
            if body.encoding_format == "base64":
                emb = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": st.embed_model,
                "usage": {"prompt_tokens": out["tokens"], "total_tokens": out["tokens"]}}

    @r.post("/predict", tags=["Simple"])
    async def predict(body: PredictRequest, who: Caller = Depends(caller)) -> dict:
        """The simplest client: `{"text": ...}` in, the model's reply as `{"result": ...}` out."""
        st.admit()
        out = await st.call(who, "llm.chat", {"messages": [{"role": "user", "content": body.text}],
                                              "max_tokens": body.max_tokens})
        return {"result": out["text"], "pid": out["pid"], "usage": out["usage"]}

    return r


# -- chat ------------------------------------------------------------------------------------------------

def _message(m: ChatMessage) -> dict:
    content = m.content
    if isinstance(content, list):
        content = "".join(p.text for p in content)
    role = "system" if m.role == "developer" else m.role
    if role == "assistant" and m.tool_calls:
        calls = []
        for c in m.tool_calls:
            try:
                arguments = json.loads(c.function.arguments or "{}")
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"tool call {c.function.name!r}: arguments are not JSON: {exc}",
                                     param="messages") from exc
            calls.append({"name": c.function.name, "arguments": arguments})
        return {"role": "assistant", "content": json.dumps({"tool_calls": calls})}
    return {"role": role, "content": content or ""}


def _sampling(body: Any) -> dict:
    args = {k: getattr(body, k) for k in SAMPLING_FIELDS if getattr(body, k) is not None}
    if args.get("n") == 1:
        del args["n"]
    if body.logit_bias:
        try:
            args["logit_bias"] = {int(k): float(v) for k, v in body.logit_bias.items()}
        except ValueError as exc:
            raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from exc
        if any(not -100 <= v <= 100 for v in args["logit_bias"].values()):
            raise InvalidRequest("logit_bias values must be in [-100, 100]", param="logit_bias")
    return args


def chat_args(body: ChatCompletionRequest) -> dict:
    args = _sampling(body)
    args["messages"] = [_message(m) for m in body.messages]
    args["max_tokens"] = body.max_completion_tokens or body.max_tokens  # None: up to the context window
    if body.logprobs:
        args["logprobs"] = body.top_logprobs or 0
    elif body.top_logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.response_format is not None:
        args["response_format"] = body.response_format
    if body.tools:
        args["functions"] = [{"name": t.function.name, "description": t.function.description or "",
                              "parameters": t.function.parameters or {"type": "object", "properties": {}}}
                             for t in body.tools]
        choice = body.tool_choice or "auto"
        if body.parallel_tool_calls is False:
            args["parallel_tool_calls"] = False
        args["tool_choice"] = choice if isinstance(choice, str) else {"function": choice.function}
    elif body.tool_choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    return args


def _openai_logprobs(entries: list[dict]) -> list[dict]:
    return [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
             "top_logprobs": [{"token": a["token"], "logprob": a["logprob"], "bytes": a["bytes"]}
                              for a in e["top_logprobs"]]} for e in entries]


def chat_response(out: dict, model: str, rid: str, created: int) -> dict:
    choices = []
    for i, text in enumerate(out["choices"]):
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if i == 0 and out.get("tool_calls"):
            message["content"] = None
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                                     for c in out["tool_calls"]]
        lp = out.get("logprobs")
        choices.append({"index": i, "message": message,
                        "logprobs": {"content": _openai_logprobs(lp[i]), "refusal": None} if lp else None,
                        "finish_reason": out["finish_reasons"][i]})
    usage = dict(out["usage"])
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": usage, "system_fingerprint": "llmasos", "llmasos": {"pid": out["pid"], "memory": out["memory"]}}


def _chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None, logprobs: Any = None,
           usage: Any = ..., index: int = 0) -> dict:
    c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
         "system_fingerprint": "llmasos",
         "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
    if usage is not ...:
        c["usage"] = usage
    return c


async def _stream_chat(st: ServerState, who: Caller, args: dict, body: ChatCompletionRequest, rid: str,
                       created: int) -> Any:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    state = {"first": True, "usage": None}

    def render(item: dict) -> Iterable[bytes]:
        if state["first"]:
            state["first"] = False
            yield event(_chunk(rid, created, body.model, {"role": "assistant", "content": ""}, **extra))
        lp = {"content": _openai_logprobs(item["logprobs"]), "refusal": None} if item.get("logprobs") else None
        if item.get("delta") or lp:
            yield event(_chunk(rid, created, body.model, {"content": item["delta"]}, logprobs=lp, **extra))
        if "finish_reason" in item:
            state["usage"] = item["usage"]
            yield event(_chunk(rid, created, body.model, {}, finish=item["finish_reason"], **extra))

    def closing() -> Iterable[bytes]:
        if include_usage and state["usage"] is not None:
            u = dict(state["usage"])
            u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
            yield event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                         "system_fingerprint": "llmasos", "choices": [], "usage": u})

    return await sse_response(st.stream(who, "llm.chat", args), render, closing)


def _as_chunks(resp: dict, body: ChatCompletionRequest) -> list[dict]:
    """A whole (tool-calling) response as stream chunks."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    rid, created, model = resp["id"], resp["created"], resp["model"]
    chunks = []
    for ch in resp["choices"]:
        msg = ch["message"]
        delta: dict = {"role": "assistant", "content": msg["content"]}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": k} for k, c in enumerate(msg["tool_calls"])]
        chunks.append(_chunk(rid, created, model, delta, index=ch["index"], **extra))
        chunks.append(_chunk(rid, created, model, {}, finish=ch["finish_reason"], index=ch["index"], **extra))
    if include_usage:
        chunks.append({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": resp["usage"]})
    return chunks


async def _one(item: Any) -> Any:
    yield item


# -- completions -----------------------------------------------------------------------------------------

def legacy_logprobs(entries: list[dict]) -> dict:
    """The /v1/completions shape: parallel lists, top alternatives as {token: logprob}."""
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


async def _stream_completion(st: ServerState, who: Caller, args: dict, body: CompletionRequest, rid: str,
                             created: int) -> Any:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    state: dict = {"usage": None, "echoed": not body.echo}

    def chunk(text: str, finish: str | None, lp: Any = None) -> dict:
        c = {"id": rid, "object": "text_completion", "created": created, "model": body.model,
             "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    def render(item: dict) -> Iterable[bytes]:
        if not state["echoed"]:
            state["echoed"] = True
            yield event(chunk(args["prompt"], None))
        lp = legacy_logprobs(item["logprobs"]) if item.get("logprobs") else None
        if item.get("delta") or lp:
            yield event(chunk(item["delta"], None, lp))
        if "finish_reason" in item:
            state["usage"] = item["usage"]
            yield event(chunk("", item["finish_reason"]))

    def closing() -> Iterable[bytes]:
        if include_usage and state["usage"] is not None:
            u = dict(state["usage"])
            u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
            yield event({"id": rid, "object": "text_completion", "created": created, "model": body.model,
                         "choices": [], "usage": u})

    return await sse_response(st.stream(who, "llm.complete", args), render, closing)

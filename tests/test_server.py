"""The OpenAI-compatible API against a real running server, through the official `openai` client: plain,
streaming, n, seed, logprobs, JSON schema, tool calls, embeddings, /predict, and every error class."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from support import builtin_server, wait_idle


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    with builtin_server(tmp_path_factory.mktemp("srv"), embedder) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def test_models_lists_the_chat_and_the_embedding_model(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["builtin", "all-MiniLM-L6-v2"]
    assert client.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_plain_chat_with_usage(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=12, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 3 and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == model


def test_streaming_equals_the_whole_reply_and_reports_usage(client, model):
    kw = dict(model=model, messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}],
              max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_n_and_seed_are_reproducible(client, model):
    kw = dict(model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=10,
              temperature=1.0, n=3, seed=1234)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # three samples, not one copied
    other = client.chat.completions.create(**{**kw, "seed": 99})
    assert [c.message.content for c in other.choices] != [c.message.content for c in a.choices]


def test_logprobs_and_top_logprobs(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count: one, two,"}],
                                       max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(lps[0])  # greedy: the best one
        assert bytes(t.bytes).decode() == t.token
    streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count: one, two,"}],
                                              max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
                                              stream=True)
    toks = [t.token for ch in streamed if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert toks == [t.token for t in content]


def test_json_schema_response_format(client, model):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "A person as JSON."}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    obj = json.loads(r.choices[0].message.content)
    jsonschema.validate(obj, schema)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Any JSON."}],
                                       max_tokens=40, temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                         "parameters": {"type": "object", "properties": {}}}}


def test_forced_and_required_tool_calls(client, model):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = client.chat.completions.create(model=model, messages=msgs, max_tokens=60, temperature=0,
                                            tools=[WEATHER, TIME],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    c = forced.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    required = client.chat.completions.create(model=model, messages=msgs, max_tokens=120, temperature=0,
                                              tools=[WEATHER, TIME], tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"
    assert {t.function.name for t in required.choices[0].message.tool_calls} <= {"get_weather", "get_time"}
    # The client runs the tool and sends the result back: the model answers in text.
    follow = client.chat.completions.create(model=model, max_tokens=20, temperature=0, tools=[WEATHER],
                                            tool_choice="none", messages=msgs + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18, "sky": "clear"}'}])
    assert follow.choices[0].message.tool_calls is None and isinstance(follow.choices[0].message.content, str)
    # Streaming with tools: the calls come in one chunk.
    chunks = list(client.chat.completions.create(
        model=model, messages=msgs, max_tokens=60, temperature=0, tools=[WEATHER], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].index == 0


def test_auto_tool_choice_answers_or_calls_well_formed(client, model):
    for prompt in ("What is the weather in Oslo?", "Say hi."):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=60, temperature=0, tools=[WEATHER], tool_choice="auto")
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments),
                                WEATHER["function"]["parameters"])
        elif c.finish_reason == "stop":
            assert isinstance(c.message.content, str) and not c.message.content.startswith('{"content"')


def test_embeddings_match_sentence_transformers(client, embedder):
    texts = ["The cat sat on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (3, 384) and [d.index for d in r.data] == [0, 1, 2]
    np.testing.assert_allclose(got, embedder.embed(texts), atol=1e-5)
    assert got[0] @ got[1] > got[0] @ got[2]
    assert r.usage.prompt_tokens > 0
    b64 = client.embeddings.create(model="all-MiniLM-L6-v2", input="The cat sat on the mat.",
                                   encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(decoded, got[0], atol=1e-6)


def test_completions(client, model):
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    c = r.choices[0]
    assert c.text and r.usage.completion_tokens <= 8
    assert "".join(c.logprobs.tokens) == c.text and all(len(t) <= 2 for t in c.logprobs.top_logprobs)
    echo = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, echo=True)
    assert echo.choices[0].text == "Once upon a time" + c.text
    many = client.completions.create(model=model, prompt=["A", "B"], max_tokens=4, n=2, temperature=1.0, seed=3)
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == c.text


def test_predict(server):
    r = httpx.post(server.url + "/predict", json={"text": "Hello there", "max_tokens": 8})
    assert r.status_code == 200 and isinstance(r.json()["result"], str) and r.json()["result"]
    assert httpx.post(server.url + "/predict", json={"txt": "x"}).status_code == 400


@pytest.mark.parametrize("kwargs, status, code", [
    (dict(model="gpt-4o"), 404, "model_not_found"),
    (dict(model="all-MiniLM-L6-v2"), 400, "model_not_supported"),
    (dict(temperature=3), 400, "invalid_request"),
    (dict(top_logprobs=3), 400, "invalid_request"),
    (dict(extra_body={"no_such_field": 1}), 400, "invalid_request"),
    (dict(messages=[]), 400, "invalid_request"),
    (dict(messages=[{"role": "user", "content": "hi \x00"}]), 400, "invalid_request"),
    (dict(max_tokens=100000), 413, "context_length_exceeded"),
    (dict(messages=[{"role": "user", "content": "word " * 3000}]), 413, "context_length_exceeded"),
    (dict(tool_choice="required"), 400, "invalid_request"),
])
def test_error_classes(client, model, kwargs, status, code):
    args = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status
    err = e.value.body
    assert err["code"] == code and err["message"] and err["type"]


def test_malformed_bodies_get_clear_400s_and_no_5xx(server):
    url = server.url + "/v1/chat/completions"
    h = {"Content-Type": "application/json"}
    cases = [b"{bad json", b"\xff\xfe not utf-8", b"[]", b'{"model": 5, "messages": "x"}', b"",
             json.dumps({"model": "builtin", "messages": [{"role": "wizard", "content": "x"}]}).encode()]
    for body in cases:
        r = httpx.post(url, content=body, headers=h)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(url, content=b"x" * (9 << 20), headers=h)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/v1/nope").status_code == 404
    assert httpx.get(server.url + "/v1/nope").json()["error"]["type"] == "not_found_error"


def test_a_client_that_disconnects_frees_its_blocks(server, model):
    os_ = server.os
    bm = os_.llm.engine.block_manager
    with httpx.stream("POST", server.url + "/v1/chat/completions",
                      json={"model": model, "messages": [{"role": "user", "content": "Go on forever."}],
                            "max_tokens": 900, "ignore_eos": True, "stream": True}) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 6:
                break
    wait_idle(os_)
    assert bm.num_free_blocks == bm.num_blocks
    killed = [p for p in os_.ps(app="api") if p["kind"] == "llm"][-1]
    assert killed["state"] == "killed" and killed["tokens_out"] < 900


def test_health_metrics_and_openapi(server, client, model):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    for name in ["llmasos_num_requests_running", "llmasos_num_requests_waiting", "llmasos_kv_cache_usage_perc",
                 "llmasos_kv_blocks_used", "llmasos_prefix_cache_hit_rate", "llmasos_time_to_first_token_seconds_bucket",
                 "llmasos_inter_token_latency_seconds_bucket", 'llmasos_generation_tokens_total{app="api"}',
                 'llmasos_syscalls_total{app="api",call="llm.chat",decision="allowed"}',
                 'llmasos_syscalls_total{app="api",call="llm.chat",decision="failed"}']:
        assert name in text, name
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"] and "/v1/processes/{pid}" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200

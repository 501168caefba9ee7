"""The upstream driver against real OpenAI-compatible servers: two LLMasOS servers act as the upstreams (one in
another process, killed with SIGKILL mid-run), a third OS runs its model layer on them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from support import free_port


def wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{base} did not become ready"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory, embedder):
    from llmasos.server import start_server
    from llmasos.system.os import OS

    root = tmp_path_factory.mktemp("upstreams")
    port = free_port()
    env = {**os.environ, "LLMASOS_URL": "", "LLMASOS_API_KEY": "", "LLMASOS_MODEL__DTYPE": "float32"}
    exe = str(Path(sys.executable).parent / "llmasos")
    remote = subprocess.Popen([exe, "serve", "--model", "builtin", "--port", str(port), "--data-dir",
                               str(root / "u1")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    local_os = OS(data_dir=root / "u2", embedder=embedder,
                  model={"name": "builtin", "dtype": "float32", "kv_cache_memory": 64 << 20, "max_num_seqs": 32})
    local = start_server(local_os)
    try:
        wait_ready(f"http://127.0.0.1:{port}", remote)
        front = OS(data_dir=root / "front", embedder=embedder,
                   model={"upstreams": f"http://127.0.0.1:{port}/v1,{local.url}/v1", "tokenizer": "builtin",
                          "upstream_max_inflight": 4})
        front_srv = start_server(front)
        yield {"remote": remote, "remote_url": f"http://127.0.0.1:{port}", "local": local, "local_os": local_os,
               "front": front, "front_url": front_srv.url}
        front_srv.stop()
        front.shutdown()
    finally:
        if remote.poll() is None:
            remote.kill()
        remote.wait(timeout=30)
        local.stop()
        local_os.shutdown()


def test_the_front_serves_the_upstream_model_with_the_same_tokens(upstreams):
    front = openai.OpenAI(base_url=upstreams["front_url"] + "/v1", api_key="x", max_retries=0)
    direct = openai.OpenAI(base_url=upstreams["local"].url + "/v1", api_key="x", max_retries=0)
    assert front.models.list().data[0].id == "builtin"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a harbor?"}]
    a = front.chat.completions.create(model="builtin", messages=msgs, max_tokens=24, temperature=0)
    b = direct.chat.completions.create(model="builtin", messages=msgs, max_tokens=24, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content  # same ids upstream, greedy
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    streamed = "".join(ch.choices[0].delta.content or "" for ch in front.chat.completions.create(
        model="builtin", messages=msgs, max_tokens=24, temperature=0, stream=True) if ch.choices)
    assert streamed == a.choices[0].message.content
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    j = front.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "ok?"}], max_tokens=20,
                                      temperature=0, response_format={"type": "json_schema",
                                                                      "json_schema": {"name": "o", "schema": schema}})
    assert isinstance(__import__("json").loads(j.choices[0].message.content)["ok"], bool)
    # Both upstreams took work (least loaded first), and the OS accounted every call as a process.
    asyncio.run(_burst(upstreams["front_url"], 8, 16))
    served = {u.url: u.served for u in upstreams["front"].llm.pool.upstreams}
    assert all(n > 0 for n in served.values()), served
    procs = upstreams["front"].ps(app="api")
    assert len([p for p in procs if p["kind"] == "llm" and p["state"] == "finished"]) >= 11


async def _burst(url: str, n: int, max_tokens: int, **extra) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def one(i: int) -> dict:
            r = await c.post("/v1/chat/completions", json={
                "model": "builtin", "messages": [{"role": "user", "content": f"Tell story {i}."}],
                "max_tokens": max_tokens, "ignore_eos": True, "seed": i, "temperature": 1.0, **extra})
            assert r.status_code == 200, r.text
            return r.json()
        return await asyncio.gather(*[one(i) for i in range(n)])


def test_an_upstream_killed_mid_run_fails_over_and_the_requests_complete(upstreams):
    front_os, remote = upstreams["front"], upstreams["remote"]
    pool = front_os.llm.pool

    async def scenario() -> list[dict]:
        task = asyncio.ensure_future(_burst(upstreams["front_url"], 8, 300))
        # Wait until the remote upstream is streaming tokens for some of them, then SIGKILL it.
        while not any(p["tokens_out"] > 5 for p in front_os.ps(state="running")) or \
                pool.upstreams[0].inflight == 0:
            assert not task.done()
            await asyncio.sleep(0.02)
        os.kill(remote.pid, signal.SIGKILL)
        return await task

    outs = asyncio.run(scenario())
    assert all(o["choices"][0]["finish_reason"] == "length" for o in outs)
    # Counted by re-tokenising the text here (the upstreams stream text, not ids): about 300, never 0.
    assert all(o["choices"][0]["message"]["content"] and o["usage"]["completion_tokens"] > 100 for o in outs)
    assert not pool.upstreams[0].healthy and pool.upstreams[1].healthy
    assert front_os.llm.stats["resumed"] >= 1
    # Later requests simply go to the survivor.
    more = asyncio.run(_burst(upstreams["front_url"], 3, 8))
    assert all(o["choices"][0]["finish_reason"] == "length" for o in more)
    snap = httpx.get(upstreams["front_url"] + "/v1/system").json()["kernel"]
    assert [u["healthy"] for u in snap["upstreams"]] == [False, True] and snap["failovers"] >= 1


def test_priorities_and_kill_hold_in_front_of_the_upstream(upstreams):
    """With the survivor's 4 slots full, an urgent request queued last starts before the earlier, less urgent
    ones; a queued request can be killed, and a running one too (its upstream stream is closed)."""
    front_os = upstreams["front"]
    bm = upstreams["local_os"].llm.engine.block_manager

    async def scenario() -> tuple[list[dict], dict, dict]:
        async with httpx.AsyncClient(base_url=upstreams["front_url"], timeout=300) as c:
            def post(i: int, prio: int, n: int) -> asyncio.Future:
                return asyncio.ensure_future(c.post("/v1/chat/completions", json={
                    "model": "builtin", "messages": [{"role": "user", "content": f"Request {i}."}],
                    "max_tokens": n, "ignore_eos": True, "priority": prio}))
            fill = [post(i, 0, 250) for i in range(4)]
            while len([p for p in front_os.ps(state="running")]) < 4:
                await asyncio.sleep(0.02)
            low = [post(10 + i, 10, 8) for i in range(3)]
            while front_os.llm.snapshot()["waiting"] < 3:
                await asyncio.sleep(0.01)
            urgent = post(99, 1, 8)
            victim = post(98, 12, 8)
            while front_os.llm.snapshot()["waiting"] < 5:
                await asyncio.sleep(0.01)
            waiting = [p for p in front_os.ps(state="waiting") if p["priority"] == 12]
            killed = (await c.delete(f"/v1/processes/{waiting[0]['pid']}")).json()
            running_pid = [p for p in front_os.ps(state="running")][0]["pid"]
            killed_running = (await c.delete(f"/v1/processes/{running_pid}")).json()
            results = [(await f).json() for f in fill + low + [urgent]]
            v = (await victim).json()
            return results, killed, {"victim": v, "killed_running": killed_running}

    results, killed, extra = asyncio.run(scenario())
    assert killed["state"] == "killed" and extra["victim"]["choices"][0]["finish_reason"] == "abort"
    assert extra["killed_running"]["state"] == "killed"
    assert sorted(r["choices"][0]["finish_reason"] for r in results[:4]).count("abort") == 1
    procs = {p["pid"]: p for p in front_os.ps(app="api")}
    by_prompt = {}
    for r in results[4:]:
        by_prompt[r["llmasos"]["pid"]] = procs[r["llmasos"]["pid"]]
    urgent_p = by_prompt[results[-1]["llmasos"]["pid"]]
    lows = [by_prompt[r["llmasos"]["pid"]] for r in results[4:7]]
    assert all(urgent_p["first_token_at"] <= p["first_token_at"] for p in lows)
    assert all(urgent_p["queued_at"] > p["queued_at"] for p in lows)  # it came last and went first
    # The upstream freed everything once its streams were closed.
    deadline = time.monotonic() + 30
    while upstreams["local_os"].llm.num_live() and time.monotonic() < deadline:
        time.sleep(0.05)
    upstreams["local_os"].llm.submit(lambda e: None).result(timeout=30)
    assert bm.num_free_blocks == bm.num_blocks

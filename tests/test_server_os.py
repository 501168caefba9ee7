"""The OS over HTTP: keys and auth (created by the CLI while the server runs), apps and their routes, processes,
audit, storage and memory scoped to the caller's app, the SDK's remote transport, the shell's commands, and
bad input and load: 200 concurrent streams, slow clients, no 5xx and no leaked KV blocks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from support import example_source, wait_idle
from typer.testing import CliRunner

from llmasos.sdk import App, Manifest, Quotas


class Narrow(App):
    manifest = Manifest(name="narrow", permissions=["llm"], quotas=Quotas(tokens_per_minute=60))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, embedder):
    """A server whose data dir gets keys from the CLI while it runs; the docs' notes app installed."""
    from llmasos.server import start_server
    from llmasos.system.os import OS

    root = tmp_path_factory.mktemp("keyed")
    apps = root / "apps"
    apps.mkdir()
    (apps / "notes.py").write_text(example_source())
    os_ = OS(data_dir=root / "data", embedder=embedder, apps=["assistant"], apps_dir=apps,
             model={"name": "builtin", "dtype": "float32", "kv_cache_memory": 64 << 20, "max_num_seqs": 64})
    os_.install(Narrow())
    handle = start_server(os_)
    handle.os, handle.data_dir, handle.apps_dir = os_, root / "data", apps
    yield handle
    handle.stop()
    os_.shutdown()


def cli(*args: str) -> str:
    """The real `llmasos` executable in a subprocess."""
    exe = Path(sys.executable).parent / "llmasos"
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def shell(*args: str, env: dict | None = None) -> str:
    """The same commands in this process (Typer's runner): the real code path, without a Python start-up."""
    from llmasos.cli import app

    r = CliRunner().invoke(app, list(args), env=env)
    assert r.exit_code == 0, r.output
    return r.output


def wait_for_status(url: str, status: int, headers: dict | None = None) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(url, headers=headers or {})
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.fixture(scope="module")
def keys(keyed):
    """Keys made by `llmasos keys create` in another process, accepted by the running server at once."""
    made = {"alpha": json.loads(cli("keys", "create", "--app", "alpha", "--data-dir", str(keyed.data_dir),
                                    "--json"))["key"]}
    for name in ("notes", "narrow"):
        made[name] = json.loads(shell("keys", "create", "--app", name, "--data-dir", str(keyed.data_dir),
                                      "--json"))["key"]
    made["admin"] = keyed.os.create_key(None, admin=True)
    made["beta"] = keyed.os.create_key("beta")
    return made


def h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_keys_switch_auth_on_without_a_restart(keyed, keys):
    r = wait_for_status(keyed.url + "/v1/models", 401)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(keyed.url + "/v1/models", headers=h("llmos-000000000000-nope")).status_code == 401
    assert httpx.get(keyed.url + "/v1/models", headers=h(keys["alpha"])).status_code == 200
    assert httpx.get(keyed.url + "/healthz").status_code == 200  # probes need no key
    # A key for a name that is no installed app registered a client app with the default manifest.
    alpha = keyed.os.services.apps.get("alpha")
    assert alpha.kind == "client" and alpha.permissions == sorted(["llm", "embed", "memory.read", "memory.write"])
    listed = json.loads(shell("keys", "list", "--app", "alpha", "--data-dir", str(keyed.data_dir), "--json"))
    assert len(listed) == 1 and listed[0]["app"] == "alpha" and "key" not in listed[0]


def test_revoked_key_is_refused(keyed):
    key = json.loads(shell("keys", "create", "--app", "gamma", "--data-dir", str(keyed.data_dir), "--json"))["key"]
    assert httpx.get(keyed.url + "/v1/models", headers=h(key)).status_code == 200
    kid = key.split("-")[1]
    shell("keys", "revoke", kid, "--data-dir", str(keyed.data_dir))
    assert httpx.get(keyed.url + "/v1/models", headers=h(key)).status_code == 401


def test_permission_quota_and_isolation_errors(keyed, keys):
    import openai

    narrow = openai.OpenAI(base_url=keyed.url + "/v1", api_key=keys["narrow"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        narrow.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert "embed" in e.value.body["message"]
    with pytest.raises(openai.RateLimitError) as e:
        narrow.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "word " * 80}],
                                       max_tokens=4)
    assert e.value.body["code"] == "quota_exceeded"
    # Memory: each app sees its own items only.
    a = httpx.post(keyed.url + "/v1/memory", headers=h(keys["alpha"]),
                   json={"text": "The launch code word is marmalade.", "metadata": {"kind": "secret"}})
    assert a.status_code == 200 and len(a.json()["ids"]) == 1
    httpx.post(keyed.url + "/v1/memory", headers=h(keys["beta"]), json={"text": "Beta likes tea."})
    hits = httpx.get(keyed.url + "/v1/memory/search", params={"q": "launch code", "k": 5},
                     headers=h(keys["alpha"])).json()["data"]
    assert hits[0]["text"] == "The launch code word is marmalade." and hits[0]["meta"] == {"kind": "secret"}
    beta_hits = httpx.get(keyed.url + "/v1/memory/search", params={"q": "launch code"},
                          headers=h(keys["beta"])).json()["data"]
    assert all("marmalade" not in x["text"] for x in beta_hits)
    # Storage is scoped too: the admin acting for another app does not see notes' key; a client app without
    # the storage permission gets 403; an app key cannot name another app.
    assert httpx.put(keyed.url + "/v1/storage/kv/plan", headers=h(keys["notes"]),
                     json={"value": {"step": 1}}).status_code == 200
    assert httpx.get(keyed.url + "/v1/storage/kv/plan", headers=h(keys["notes"])).json()["value"] == {"step": 1}
    other = {**h(keys["admin"]), "X-LLMasOS-App": "assistant"}
    assert httpx.get(keyed.url + "/v1/storage/kv/plan", headers=other).status_code == 404
    assert httpx.get(keyed.url + "/v1/storage/kv/plan", headers=h(keys["beta"])).status_code == 403
    assert httpx.get(keyed.url + "/v1/storage/kv/plan", headers={**h(keys["beta"]), "X-LLMasOS-App": "notes"}
                     ).status_code == 404
    r = httpx.get(keyed.url + "/v1/apps/notes/sessions", headers=h(keys["beta"]))
    assert r.status_code == 404
    assert httpx.get(keyed.url + "/v1/system", headers=h(keys["beta"])).status_code == 403


def test_storage_routes(keyed, keys):
    k, u = h(keys["notes"]), keyed.url + "/v1/storage"
    assert httpx.put(u + "/docs/books/b1", headers=k, json={"title": "Dune", "year": 1965}).status_code == 200
    assert httpx.get(u + "/docs/books/b1", headers=k).json() == {"title": "Dune", "year": 1965}
    found = httpx.post(u + "/docs/books/find", headers=k, json={"where": {"year": 1965}}).json()["data"]
    assert [(d["id"], d["body"]["title"]) for d in found] == [("b1", "Dune")]
    assert httpx.put(u + "/files/a/readme.txt", headers=k, json={"data": "hello"}).json()["bytes"] == 5
    assert httpx.get(u + "/files/a/readme.txt", headers=k).json()["data"] == "hello"
    assert [f["path"] for f in httpx.get(u + "/files", headers=k).json()["data"]] == ["a/readme.txt"]
    bad = httpx.put(u + "/files/..%2F..%2Fetc%2Fpasswd", headers=k, json={"data": "x"})
    assert bad.status_code in (400, 403, 404) and "error" in bad.json()
    assert httpx.delete(u + "/files/a/readme.txt", headers=k).status_code == 200
    assert httpx.get(u + "/files/a/readme.txt", headers=k).status_code == 404
    assert "plan" in httpx.get(u + "/kv", headers=k).json()["data"]


def test_apps_chat_handlers_processes_and_audit(keyed, keys):
    admin = h(keys["admin"])
    names = {a["name"]: a for a in httpx.get(keyed.url + "/v1/apps", headers=admin).json()["data"]}
    assert {"assistant", "notes", "narrow", "alpha"} <= set(names) and "add" in names["notes"]["handlers"]
    only_own = httpx.get(keyed.url + "/v1/apps", headers=h(keys["notes"])).json()["data"]
    assert [a["name"] for a in only_own] == ["notes"]
    r = httpx.post(keyed.url + "/v1/apps/assistant/chat", headers=admin,
                   json={"session_id": "s1", "message": "what is 6*7?"})
    assert r.status_code == 200 and "42" in r.json()["reply"]
    # Streamed, with the process record of the reply at the end.
    with httpx.stream("POST", keyed.url + "/v1/apps/assistant/chat", headers=admin,
                      json={"session_id": "s1", "message": "Tell me about harbors.", "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert "".join(e.get("delta", "") for e in events[:-1])
    record = events[-1]
    assert record["done"] and record["processes"] and record["processes"][0]["tokens_out"] > 0
    history = httpx.get(keyed.url + "/v1/apps/assistant/sessions/s1", headers=admin).json()["data"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    # An app's own route: a handler declared with @handler.
    added = httpx.post(keyed.url + "/v1/apps/notes/handlers/add", headers=h(keys["notes"]),
                       json={"title": "milk", "text": "Buy oat milk and eggs on Friday."})
    assert added.status_code == 200 and added.json()["result"]["title"] == "milk"
    bad = httpx.post(keyed.url + "/v1/apps/notes/handlers/add", headers=h(keys["notes"]), json={"title": "x"})
    assert bad.status_code == 400
    # Processes: an app sees its own; the admin sees all, kills and renices.
    own = httpx.get(keyed.url + "/v1/processes", headers=h(keys["notes"])).json()["data"]
    assert own and {p["app"] for p in own} == {"notes"}
    everything = httpx.get(keyed.url + "/v1/processes", headers=admin).json()["data"]
    assert {"assistant", "notes"} <= {p["app"] for p in everything}
    finished = everything[-1]["pid"]
    assert httpx.patch(f"{keyed.url}/v1/processes/{finished}", headers=admin,
                       json={"priority": 3}).status_code == 400  # only live processes
    assert httpx.delete(f"{keyed.url}/v1/processes/999999", headers=admin).status_code == 404
    audit = httpx.get(keyed.url + "/v1/audit", headers=admin, params={"app": "notes", "call": "storage.doc_put"})
    assert audit.json()["data"] and {e["call"] for e in audit.json()["data"]} == {"storage.doc_put"}
    refused = httpx.post(keyed.url + "/v1/embeddings", headers=h(keys["narrow"]),
                         json={"model": "all-MiniLM-L6-v2", "input": "x"})
    assert refused.status_code == 403
    denied = httpx.get(keyed.url + "/v1/audit", headers=h(keys["narrow"]), params={"decision": "denied"}).json()
    assert denied["data"] and {e["app"] for e in denied["data"]} == {"narrow"}


def test_kill_and_renice_a_live_process_over_http(keyed, keys):
    admin = h(keys["admin"])
    os_ = keyed.os

    async def scenario() -> tuple[dict, dict, dict]:
        async with httpx.AsyncClient(base_url=keyed.url, headers=admin, timeout=120) as c:
            gen = asyncio.ensure_future(c.post("/v1/chat/completions", json={
                "model": "builtin", "messages": [{"role": "user", "content": "Go."}], "max_tokens": 900,
                "ignore_eos": True}))
            while True:
                live = (await c.get("/v1/processes", params={"state": "running"})).json()["data"]
                if live:
                    break
                assert not gen.done(), gen.result().text
                await asyncio.sleep(0.02)
            reniced = (await c.patch(f"/v1/processes/{live[0]['pid']}", json={"priority": 5})).json()
            killed = (await c.delete(f"/v1/processes/{live[0]['pid']}")).json()
            return reniced, killed, (await gen).json()

    reniced, killed, reply = asyncio.run(scenario())
    assert reniced["priority"] == 5 and killed["state"] == "killed"
    assert reply["choices"][0]["finish_reason"] == "abort" and reply["usage"]["completion_tokens"] < 900
    wait_idle(os_)
    bm = os_.llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_the_sdk_example_app_runs_in_process_and_remote(keyed, keys, tmp_path):
    """The docs' notes app: its handlers in this process through the OS, and in another process through HTTP
    with its key, unchanged."""
    os_ = keyed.os
    local = {"add": os_.run(os_.handle("notes", "add", title="rust", text="Read the chapter on ownership.")),
             "find": os_.run(os_.handle("notes", "find", query="learning a programming language", k=1))}
    script = tmp_path / "remote_notes.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(keyed.apps_dir)!r})
        from notes import Notes
        from llmasos.sdk import remote_context

        async def main():
            ctx = remote_context({keyed.url!r}, {keys["notes"]!r}, app="notes")
            app = Notes()
            out = {{"add": await app.add(ctx, title="bread", text="Bake sourdough bread on Sunday morning."),
                    "find": await app.find(ctx, query="baking", k=1),
                    "tags": await app.tags(ctx, title="bread"),
                    "chat": await app.chat(ctx, "remote-1", "What should I bake?")}}
            try:
                await ctx.storage.get_doc("notes", "no-such-note")
            except Exception as exc:
                out["missing"] = type(exc).__name__
            print(json.dumps(out))

        asyncio.run(main())
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    remote = json.loads(r.stdout.strip().splitlines()[-1])
    assert local["add"]["title"] == "rust" and local["find"] == ["rust"]
    assert remote["add"]["title"] == "bread" and remote["add"]["words"] == '{"words": 6}'
    assert remote["find"] == ["bread"] and isinstance(remote["tags"]["tags"], list)
    assert isinstance(remote["chat"], str) and remote["missing"] == "NotFound"
    # The remote calls were the app's own system calls: audited under its name.
    calls = {e["call"] for e in os_.services.audit.query("notes", limit=500)}
    assert {"storage.doc_put", "memory.archive", "tools.call", "llm.chat"} <= calls


def test_shell_commands_against_the_server(keyed, keys):
    from llmasos.cli import app

    runner = CliRunner()
    env = {"LLMASOS_URL": keyed.url, "LLMASOS_API_KEY": keys["admin"]}

    def run(*args: str) -> str:
        r = runner.invoke(app, list(args), env=env)
        assert r.exit_code == 0, r.output
        return r.output

    reply = json.loads(run("run", "assistant", "what is 2+3?", "--json"))
    assert "5" in reply["reply"] and reply["pid"] and reply["session_id"].startswith("cli-")
    procs = json.loads(run("ps", "--json"))
    assert reply["pid"] in [p["pid"] for p in procs] and {"pid", "app", "state", "tokens_out"} <= set(procs[0])
    assert {a["name"] for a in json.loads(run("apps", "--json"))} >= {"assistant", "notes"}
    assert [m["id"] for m in json.loads(run("models", "--json"))] == ["builtin", "all-MiniLM-L6-v2"]
    rows = json.loads(run("audit", "--json", "--app", "assistant", "--limit", "5"))
    assert 0 < len(rows) <= 5 and {r["app"] for r in rows} == {"assistant"}
    assert "live processes" in run("top", "--once")
    bad = runner.invoke(app, ["kill", "999999"], env=env)
    assert bad.exit_code == 2 and "no process" in bad.output
    unauth = runner.invoke(app, ["ps"], env={"LLMASOS_URL": keyed.url, "LLMASOS_API_KEY": ""})
    assert unauth.exit_code == 2 and "API key" in unauth.output


def test_a_server_without_a_model_answers_503(tmp_path, embedder):
    import openai

    from llmasos.server import start_server
    from llmasos.system.os import OS

    with OS(data_dir=tmp_path, embedder=embedder, load_model=False) as os_, start_server(os_) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="none", prompt="hi", max_tokens=2)
        assert e.value.status_code == 503 and e.value.body["code"] == "overloaded"
        assert httpx.get(srv.url + "/readyz").status_code == 503
        assert len(c.embeddings.create(model="all-MiniLM-L6-v2", input="still embeds").data[0].embedding) == 384


def test_200_concurrent_streams_and_slow_clients(keyed, keys):
    """200 streaming clients at once while 20 slowloris connections hold half-sent requests: every stream
    completes with [DONE], nothing answers 5xx, and the kernel ends with every KV block free."""
    url = keyed.url
    host, port = url.removeprefix("http://").split(":")
    slow = []
    for _ in range(20):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"model\"")
        slow.append(s)

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, int, bool]:
        async with c.stream("POST", "/v1/chat/completions", json={
                "model": "builtin", "messages": [{"role": "user", "content": f"Story number {i}."}],
                "max_tokens": 16, "stream": True, "seed": i}) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        chunks = [json.loads(x[6:]) for x in lines[:-1]]
        ok = lines[-1] == "data: [DONE]" and not any("error" in ch for ch in chunks)
        return r.status_code, sum(1 for ch in chunks if ch["choices"] and ch["choices"][0]["delta"].get("content")), ok

    async def run_all() -> list:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=url, headers=h(keys["admin"]), timeout=300, limits=limits) as c:
            return await asyncio.gather(*[one(c, i) for i in range(200)])

    results = asyncio.run(run_all())
    for s in slow:
        s.close()
    assert [r[0] for r in results] == [200] * 200
    assert all(r[2] for r in results) and all(r[1] > 0 for r in results)
    wait_idle(keyed.os)
    bm = keyed.os.llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not keyed.os.llm.engine.requests


def test_local_mode_binds_to_localhost_only(tmp_path, embedder):
    from llmasos.server.run import bind_host
    from llmasos.system.os import OS

    with OS(data_dir=tmp_path, embedder=embedder, load_model=False) as os_:
        host, note = bind_host(os_, "0.0.0.0")
        assert host == "127.0.0.1" and "no API keys" in note
        os_.create_key("someone")
        assert bind_host(os_, "0.0.0.0") == ("0.0.0.0", None)
    assert os.environ.get("LLMASOS_URL") is None  # the shell tests passed their env explicitly


def test_chat_repl_through_the_server(keyed, keys):
    """`llmasos chat --url`: the streaming REPL against a running server; the session is the server's."""
    from llmasos.cli import app

    r = CliRunner().invoke(app, ["chat", "assistant", "--session", "repl-1"], input="what is 7*6?\n/exit\n",
                           env={"LLMASOS_URL": keyed.url, "LLMASOS_API_KEY": keys["admin"]})
    assert r.exit_code == 0, r.output
    assert "7*6 = 42" in r.stdout
    history = httpx.get(keyed.url + "/v1/apps/assistant/sessions/repl-1", headers=h(keys["admin"])).json()["data"]
    assert [m["content"] for m in history] == ["what is 7*6?", "7*6 = 42"]


def test_shell_renices_and_kills_a_live_process(keyed, keys):
    """`llmasos renice` and `llmasos kill` against the server, on a generation that is running."""
    env = {"LLMASOS_URL": keyed.url, "LLMASOS_API_KEY": keys["admin"]}
    os_ = keyed.os

    async def scenario() -> tuple[str, str, dict]:
        async with httpx.AsyncClient(base_url=keyed.url, headers=h(keys["admin"]), timeout=120) as c:
            gen = asyncio.ensure_future(c.post("/v1/chat/completions", json={
                "model": "builtin", "messages": [{"role": "user", "content": "On and on."}], "max_tokens": 900,
                "ignore_eos": True}))
            while not (live := [p for p in os_.ps(state="running") if p["kind"] == "llm"]):
                assert not gen.done(), gen.result().text
                await asyncio.sleep(0.02)
            pid = str(live[0]["pid"])
            reniced = await asyncio.to_thread(shell, "renice", pid, "7", "--json", env=env)
            killed = await asyncio.to_thread(shell, "kill", pid, env=env)
            return reniced, killed, (await gen).json()

    reniced, killed, reply = asyncio.run(scenario())
    assert json.loads(reniced)["priority"] == 7
    assert "killed" in killed and reply["choices"][0]["finish_reason"] == "abort"


def test_bench_serve_runs_against_the_server(keyed, keys, tmp_path):
    """`llmasos bench serve --url`: the load benchmark against a running server, with its JSON figures."""
    out = tmp_path / "bench.json"
    cli("bench", "serve", "--url", keyed.url, "--api-key", keys["admin"], "--num-prompts", "6", "--concurrency",
        "6", "--input-len", "16", "--output-len", "4", "--warmup", "0", "--skip-vllm", "--json-out", str(out))
    figures = json.loads(out.read_text())
    run = figures["runs"][0]
    assert (run["successful"], run["failed"], run["status_codes"]) == (6, 0, {"200": 6}), run
    assert run["ttft_p50_ms"] > 0 and run["output_tok_s"] > 0
    assert figures["args"]["api_key"] == "***"  # the key is not written to the results

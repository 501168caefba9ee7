"""Two `llmasos serve` processes on one real PostgreSQL: a session started on one continues on the other, and
both see the same memory, audit log, keys and quotas."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support import free_port


@pytest.fixture
def pg_schema(pg_available):
    import sqlalchemy

    schema = f"replicas_{uuid.uuid4().hex[:10]}"
    yield pg_available, schema
    eng = sqlalchemy.create_engine(pg_available)
    with eng.begin() as conn:
        conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


def test_two_replicas_share_state_through_postgresql(pg_schema, tmp_path: Path):
    url, schema = pg_schema
    env = {**os.environ, "LLMASOS_DATABASE_URL": url, "LLMASOS_DATABASE_SCHEMA": schema,
           "LLMASOS_MODEL__NAME": "builtin", "LLMASOS_MODEL__DTYPE": "float32",
           "LLMASOS_DEFAULT_QUOTAS__TOKENS_PER_MINUTE": "1500", "LLMASOS_URL": "", "LLMASOS_API_KEY": ""}
    exe = str(Path(sys.executable).parent / "llmasos")
    # A key made before the replicas start, straight into the shared database.
    made = subprocess.run([exe, "keys", "create", "--app", "shop", "--json", "--data-dir", str(tmp_path / "cli")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    import json

    key = json.loads(made.stdout)["key"]
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([exe, "serve", "--port", str(p), "--data-dir", str(tmp_path / f"r{i}")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, p in enumerate(ports)]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 180
        for base, proc in zip(bases, procs, strict=True):
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "replica did not become ready"
                time.sleep(0.3)
        a, b = (httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
                for base in bases)
        # Keys: both accept the key, both refuse a request without one.
        assert all(httpx.get(base + "/v1/models").status_code == 401 for base in bases)
        # Memory: archival items and a session written on A are read on B.
        assert a.post("/v1/memory", json={"text": "Order 48213 shipped on Monday by courier."}).status_code == 200
        hits = b.get("/v1/memory/search", params={"q": "when did my order ship", "k": 1}).json()["data"]
        assert hits and "48213" in hits[0]["text"]
        first = a.post("/v1/syscalls/llm.chat", json={"args": {"session": "s1", "message": "Hi, I am Ada.",
                                                                "max_tokens": 12}})
        assert first.status_code == 200, first.text
        second = b.post("/v1/syscalls/llm.chat", json={"args": {"session": "s1", "message": "Who am I?",
                                                                 "max_tokens": 12}})
        assert second.status_code == 200, second.text
        history = a.post("/v1/syscalls/memory.history", json={"args": {"session": "s1"}}).json()["result"]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert history[0]["content"] == "Hi, I am Ada." and history[2]["content"] == "Who am I?"
        # B's prompt held A's turn: the memory manager built it from the shared history.
        assert second.json()["result"]["memory"]["kept_turns"] >= 2
        # Audit: each replica's calls are in the one log.
        calls = a.get("/v1/audit", params={"limit": 100}).json()["data"]
        assert sum(1 for c in calls if c["call"] == "llm.chat") == 2
        # Quotas: tokens spent on either replica count against one tokens-per-minute quota.
        status = [200]
        for i in range(40):
            client = (a, b)[i % 2]
            r = client.post("/v1/syscalls/llm.complete", json={"args": {"prompt": "Count to ten: one two",
                                                                         "max_tokens": 48, "ignore_eos": True}})
            status.append(r.status_code)
            if r.status_code == 429:
                break
        assert status[-1] == 429, status
        other = (a, b)[(len(status) - 1) % 2]  # the replica that did not refuse last also refuses now
        r = other.post("/v1/syscalls/llm.complete", json={"args": {"prompt": "hi", "max_tokens": 8}})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        spent = sum(48 for s in status[1:] if s == 200)
        assert spent > 750, status  # both replicas' tokens were counted, not each one's alone
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

"""Acknowledged writes survive `kill -9`, on SQLite and on PostgreSQL; a write that fails part-way leaves nothing.

A helper process writes in a loop and prints `ack N` after each write returns; the test kills it with SIGKILL
once it has seen enough acks (so the kill lands in the middle of some write), reopens the database and checks
that every acknowledged write is there, intact, and that the database still works. The helper embeds with a
deterministic stand-in (a unit vector seeded by the text): loading the real embedder in a subprocess would cost
~10 s, and what is tested here is the database, not the embeddings.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from llmasos.system.errors import InvalidRequest, QuotaExceeded
from llmasos.system.memory.stores import ArchivalMemory, RecallMemory
from llmasos.system.storage.db import Database
from llmasos.system.storage.store import Store
from llmasos.system.storage.tables import archival, messages
from llmasos.system.storage.vectors import VectorIndex

ACKS = 200
DIM = 384


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors (the same function runs in the helper process)."""
    out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


HELPER = textwrap.dedent('''
    import sys
    import zlib

    import numpy as np

    from llmasos.system.memory.stores import ArchivalMemory, RecallMemory
    from llmasos.system.storage.db import Database
    from llmasos.system.storage.store import Store
    from llmasos.system.storage.vectors import VectorIndex

    DIM = 384

    def fake_embed(texts):
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    url, schema = sys.argv[1], sys.argv[2] or None
    db = Database(url, schema)
    store = Store(db)
    vectors = VectorIndex(db, DIM)
    arch = ArchivalMemory(db, vectors, fake_embed)
    recall = RecallMemory(db, vectors, fake_embed, lambda s: len(s.split()))
    print("ready", flush=True)
    i = 0
    while True:
        store.kv_set("dur", f"k{i}", {"i": i, "pad": "x" * (i % 50), "nested": [i, str(i), {"ok": True}]},
                     limit=10 << 20)
        store.doc_put("dur", "docs", f"d{i}", {"i": i, "text": f"document {i}"})
        ids = arch.insert_many("dur", [f"fact {i} a", f"fact {i} b"], [{"i": i}, {"i": i}])
        mid = recall.append("dur", "s", "user", f"message {i}")
        sys.stdout.write(f"ack {i} {ids[0]} {ids[1]} {mid}\\n")
        sys.stdout.flush()
        i += 1
''')


def kv_value(i: int) -> dict:
    return {"i": i, "pad": "x" * (i % 50), "nested": [i, str(i), {"ok": True}]}


def run_until_acked_then_kill(tmp_path: Path, url: str, schema: str | None) -> list[tuple[int, int, int, int]]:
    script = tmp_path / "writer.py"
    script.write_text(HELPER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(script), url, schema or ""], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    acks: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + 180
    try:
        while len(acks) < ACKS:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail(f"the writer acknowledged only {len(acks)} writes in time")
            if line is None:
                pytest.fail(f"the writer exited early (rc={proc.wait()}): {proc.stderr.read()[-3000:]}")
            if line.startswith("ack "):
                acks.append(tuple(int(x) for x in line.split()[1:]))  # type: ignore[arg-type]
        os.kill(proc.pid, signal.SIGKILL)  # while it is busy with the next writes
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert rc == -signal.SIGKILL
    assert [a[0] for a in acks] == list(range(ACKS))
    return acks


def check_everything_acknowledged_survived(db: Database, acks: list[tuple[int, int, int, int]]) -> None:
    store = Store(db)
    for i, *_ in acks:
        assert store.kv_get("dur", f"k{i}") == kv_value(i)
        assert store.doc_get("dur", "docs", f"d{i}") == {"i": i, "text": f"document {i}"}
    # unacknowledged writes may or may not be there, but never half: every stored value is whole
    keys = store.kv_list("dur", "k")
    assert len(keys) >= ACKS
    for k in keys:
        assert store.kv_get("dur", k) == kv_value(int(k[1:]))
    # the usage counter moved in the same transactions as the data
    with db.engine.connect() as conn:
        total = conn.execute(sa.text("SELECT (SELECT COALESCE(SUM(size), 0) FROM kv WHERE app = 'dur') + "
                                     "(SELECT COALESCE(SUM(size), 0) FROM documents WHERE app = 'dur')")).scalar()
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(sa.select(archival.c.id, archival.c.text,
                                                                      archival.c.embedding))}
        msgs = {r[0]: (r[1], r[2]) for r in conn.execute(sa.select(messages.c.id, messages.c.content,
                                                                      messages.c.embedding))}
    assert store.used_bytes("dur") == int(total)
    # archival: both items of every acknowledged batch, with their exact vectors; batches are all-or-nothing
    for i, a, b, m in acks:
        for item_id, text in ((a, f"fact {i} a"), (b, f"fact {i} b")):
            assert rows[item_id][0] == text
            assert rows[item_id][1] == fake_embed([text])[0].tobytes()
        assert msgs[m] == (f"message {i}", fake_embed([f"message {i}"])[0].tobytes())
    texts = sorted(t for t, _ in rows.values())
    batches = {t.rsplit(" ", 1)[0] for t in texts}
    assert len(texts) == 2 * len(batches)
    # and search finds them through a fresh vector index
    vectors = VectorIndex(db, DIM)
    arch = ArchivalMemory(db, vectors, fake_embed)
    i, a, _, _ = acks[123]
    hit = arch.search("dur", f"fact {i} a", k=1)[0]
    assert (hit.id, hit.text, hit.meta) == (a, f"fact {i} a", {"i": i})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    recall = RecallMemory(db, vectors, fake_embed, lambda s: len(s.split()))
    assert recall.search("dur", "message 77", k=1)[0].id == acks[77][3]
    # the database takes more writes
    store.kv_set("dur", "after", {"still": "works"})
    assert store.kv_get("dur", "after") == {"still": "works"}
    arch.insert("dur", "written after the crash")
    assert arch.search("dur", "written after the crash", k=1)[0].text == "written after the crash"


def test_acknowledged_writes_survive_kill_9_sqlite(tmp_path: Path):
    path = tmp_path / "os.db"
    url = f"sqlite:///{path}"
    acks = run_until_acked_then_kill(tmp_path, url, None)
    assert path.exists()
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        check_everything_acknowledged_survived(db, acks)
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        db.close()


def test_acknowledged_writes_survive_kill_9_postgresql(tmp_path: Path, pg_available: str):
    schema = f"dur_{uuid.uuid4().hex[:12]}"
    try:
        acks = run_until_acked_then_kill(tmp_path, pg_available, schema)
        db = Database(pg_available, schema)
        try:
            check_everything_acknowledged_survived(db, acks)
        finally:
            db.close()
    finally:
        eng = sa.create_engine(pg_available)
        with eng.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        eng.dispose()


# -- failures part-way leave nothing ------------------------------------------------------------------------------

def test_a_write_failing_part_way_leaves_no_partial_record(database: Database):
    vectors = VectorIndex(database, DIM)
    arch = ArchivalMemory(database, vectors, fake_embed)
    recall = RecallMemory(database, vectors, fake_embed, lambda s: len(s.split()))
    store = Store(database)
    arch.insert("a", "already here")
    recall.append("a", "s", "user", "already here")
    store.kv_set("a", "k", "already here")

    # validation fails on the third item: nothing of the batch is written
    with pytest.raises(InvalidRequest):
        arch.insert_many("a", ["one", "two", "three\x00"])
    with pytest.raises(InvalidRequest):
        arch.insert_many("a", ["one", "two", "three"], [{}, {}, {"bad": float("nan")}])
    with pytest.raises(InvalidRequest):
        recall.append_many("a", "s", [("user", "one"), ("assistant", "two"), ("user", "\ud800")])

    # the database has already taken two rows of the transaction when the third fails: all rolled back
    def short_embed(texts: list[str]) -> np.ndarray:  # an embedder that returns one vector too few
        return fake_embed(texts)[:-1]

    with pytest.raises(ValueError):
        ArchivalMemory(database, vectors, short_embed).insert_many("a", ["one", "two", "three"])
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT text FROM archival")).all() == [("already here",)]
        assert conn.execute(sa.text("SELECT content FROM messages")).all() == [("already here",)]
    assert arch.count("a") == 1 and recall.count("a", "s") == 1
    assert [h.text for h in arch.search("a", "one", k=10)] == ["already here"]

    # a failed quota check rolls back the value and the usage together
    used = store.used_bytes("a")
    with pytest.raises(QuotaExceeded):
        store.kv_set("a", "big", "x" * 1000, limit=used + 10)
    assert store.kv_list("a") == ["k"] and store.used_bytes("a") == used

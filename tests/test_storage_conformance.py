"""The storage conformance suite: every test runs once on SQLite and once on PostgreSQL (through the `database`
and `db_url` fixtures), so both backends give the same answers. Real databases, a real embedder, no mocks.

Covered: migrations, the key-value store (validation, isolation, JSON round trips, quotas, concurrent writers),
documents, recall and archival memory (semantic and text search, filters, user scoping), the in-process vector
index kept in sync across replicas, core blocks, summaries, the append-only audit log and API keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from llmasos.system.audit import AuditLog
from llmasos.system.errors import AuthenticationError, InvalidRequest, NotFound, QuotaExceeded
from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, RecallMemory, Summary, SummaryStore
from llmasos.system.principals import ADMIN, KEY_PREFIX, KeyStore, Principal
from llmasos.system.storage.db import MIGRATIONS, Database
from llmasos.system.storage.store import Store
from llmasos.system.storage.tables import archival, messages, metadata
from llmasos.system.storage.vectors import VectorIndex
from llmasos.system.validate import MAX_JSON_BYTES, MAX_JSON_DEPTH


def words(s: str) -> int:
    return len(s.split())


def nested(depth: int):
    """A string `depth` list levels down (the string itself sits at that depth)."""
    v = "x"
    for _ in range(depth):
        v = [v]
    return v


def raw_rows(db: Database, sql: str, **params) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def kv_total(db: Database, app: str) -> int:
    return int(raw_rows(db, "SELECT COALESCE(SUM(size), 0) FROM kv WHERE app = :a", a=app)[0][0]) + int(
        raw_rows(db, "SELECT COALESCE(SUM(size), 0) FROM documents WHERE app = :a", a=app)[0][0])


class CachedEmbed:
    """The session's real embedder, memoised: each text is embedded once for both backends, and the texts this
    module uses are embedded up front in one batch (single-text calls cost far more per text on a busy CPU)."""

    def __init__(self, embedder) -> None:  # noqa: ANN001
        self.embedder, self.dim, self.cache = embedder, embedder.dim, {}

    def prewarm(self, texts: list[str]) -> None:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            self.cache.update(zip(todo, self.embedder.embed(todo), strict=True))

    def __call__(self, texts: list[str]):  # noqa: ANN204
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.embedder.embed(todo), strict=True))
        return np.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="module")
def embed(embedder) -> CachedEmbed:
    e = CachedEmbed(embedder)
    e.prewarm([t for t, _, _ in FACTS] + [t for _, t in UNRELATED] + [VET] + TEXTS_AND_QUERIES)
    return e


@pytest.fixture
def store(database: Database) -> Store:
    return Store(database)


@pytest.fixture
def recall(database: Database, embed: CachedEmbed) -> RecallMemory:
    return RecallMemory(database, VectorIndex(database, embed.dim), embed, words)


@pytest.fixture
def archive(database: Database, embed: CachedEmbed) -> ArchivalMemory:
    return ArchivalMemory(database, VectorIndex(database, embed.dim), embed)


@pytest.fixture
def replica(db_url, database: Database):
    """A second Database on the same URL/schema: another OS process sharing the data."""
    url, schema = db_url
    db2 = Database(url, schema)
    yield db2
    db2.close()


TEXTS_AND_QUERIES = [  # every other text the tests below embed, so the module embeds them in one batch
    "A flagged item.", "Already here.", "App b's private note about peanuts",
    "App b's private note about peanuts.", "Bob's password hint", "Booked the CAT for Tuesday at 10.",
    "Booked.", "France", "I am 100 percent sure.", "I am 100% sure.", "Icelandic climate in December",
    "Je vais à l'ÉCOLE demain, ПРИВЕТ", "My dog has a vet check-up tomorrow.", "The user drinks oat milk.",
    "The user has two sisters.", "The user is a professional chess player.",
    "The user is allergic to shellfish.", "The user is learning to play the cello.",
    "The user lives in Lisbon.", "The user works as a nurse.", "The user's cat is called Miso.",
    "anything at all", "b's own turn", "back\\slash", "board games", "first", "food allergy", "hello",
    "holidays", "name of my kitten", "not yours", "one", "password hint", "peanut allergy", "peanuts allergy",
    "pet doctor visit", "siblings", "tell me everything", "two", "use snakeXcase names",
    "use snake_case names", "warm up", "what should I avoid eating because of allergies?",
    "where does the user live?", "which musical instrument?", "我的猫需要看兽医", "anything", "q",
]


# -- migrations ---------------------------------------------------------------------------------------------------

def test_migrations_create_every_table_with_its_columns(database: Database):
    insp = sa.inspect(database.engine)
    names = set(insp.get_table_names(schema=database.schema))
    assert set(metadata.tables) | {"alembic_version"} <= names
    for table in metadata.tables.values():
        cols = {c["name"] for c in insp.get_columns(table.name, schema=database.schema)}
        assert cols == set(table.c.keys()), table.name
    if database.schema is not None:  # PostgreSQL: everything lives in the test's own schema, nothing in public
        assert not set(metadata.tables) & set(insp.get_table_names(schema="public"))


def test_reopening_is_a_noop_at_alembic_head(db_url, database: Database):
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    assert len(heads) == 1
    assert raw_rows(database, "SELECT version_num FROM alembic_version") == [(heads[0],)]
    Store(database).kv_set("a", "k", {"v": 1})
    url, schema = db_url
    again = Database(url, schema)  # must not re-run migrations (they would fail: tables/triggers exist)
    try:
        assert raw_rows(again, "SELECT version_num FROM alembic_version") == [(heads[0],)]
        assert Store(again).kv_get("a", "k") == {"v": 1}
        again.migrate()  # explicitly, too: a no-op
        assert raw_rows(again, "SELECT version_num FROM alembic_version") == [(heads[0],)]
    finally:
        again.close()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def test_commits_are_durable_by_configuration(database: Database):
    with database.engine.connect() as conn:
        if database.dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: in the WAL before ack
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        else:
            assert database.dialect == "postgresql"
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            assert conn.exec_driver_sql("SHOW fsync").scalar() == "on"
            assert conn.exec_driver_sql("SELECT current_schema()").scalar() == database.schema


def test_bad_schema_names_are_refused(db_url):
    url, _ = db_url
    for bad in ("Bad", "x; DROP SCHEMA public", "1abc", "a" * 64, ""):
        with pytest.raises(ValueError, match="schema"):
            Database(url, bad)


# -- key-value ----------------------------------------------------------------------------------------------------

def test_kv_set_get_overwrite_delete_list(store: Store):
    store.kv_set("a", "k2", "two")
    store.kv_set("a", "k1", 1)
    store.kv_set("a", "k3", [3])
    store.kv_set("a", "other", {"o": True})
    assert store.kv_get("a", "k1") == 1
    assert store.kv_list("a") == ["k1", "k2", "k3", "other"]
    assert store.kv_list("a", "k") == ["k1", "k2", "k3"]
    assert store.kv_list("a", "k", limit=2) == ["k1", "k2"]
    assert store.kv_list("a", "zzz") == []
    store.kv_set("a", "k1", {"now": "a dict"})
    assert store.kv_get("a", "k1") == {"now": "a dict"}
    store.kv_delete("a", "k1")
    with pytest.raises(NotFound):
        store.kv_get("a", "k1")
    with pytest.raises(NotFound):
        store.kv_delete("a", "k1")
    with pytest.raises(NotFound):
        store.kv_get("a", "never-set")
    assert store.kv_list("a") == ["k2", "k3", "other"]
    for bad in (0, -1, 1001, True, "5", 2.0):
        with pytest.raises(InvalidRequest):
            store.kv_list("a", limit=bad)


def test_kv_prefix_is_literal_and_case_sensitive(store: Store):
    keys = ["50%_off", "50%Xoff", "50Xoff", "50_off", "a_b", "axb", "a\\b", "Apple", "apple", "Ünï_😀", "ünï"]
    for k in keys:
        store.kv_set("a", k, k)
    assert set(store.kv_list("a", "50%")) == {"50%_off", "50%Xoff"}
    assert store.kv_list("a", "50%_") == ["50%_off"]
    assert store.kv_list("a", "50_") == ["50_off"]
    assert store.kv_list("a", "a_") == ["a_b"]
    assert store.kv_list("a", "a\\") == ["a\\b"]
    assert set(store.kv_list("a", "a")) == {"a\\b", "a_b", "apple", "axb"}  # not "Apple": case matters on both
    assert store.kv_list("a", "A") == ["Apple"]
    assert store.kv_list("a", "Ünï_") == ["Ünï_😀"]
    assert store.kv_list("a", "%") == []
    assert store.kv_list("a", "_") == []
    assert set(store.kv_list("a")) == set(keys)
    for k in keys:
        assert store.kv_get("a", k) == k


def test_kv_apps_are_isolated(store: Store):
    store.kv_set("a", "secret", {"owner": "a"})
    store.kv_set("a", "shared-name", "a's")
    store.kv_set("b", "shared-name", "b's")
    with pytest.raises(NotFound):
        store.kv_get("b", "secret")
    with pytest.raises(NotFound):
        store.kv_delete("b", "secret")
    assert store.kv_list("b") == ["shared-name"]
    assert store.kv_list("b", "sec") == []
    assert store.kv_get("a", "shared-name") == "a's" and store.kv_get("b", "shared-name") == "b's"
    store.kv_delete("b", "shared-name")
    assert store.kv_get("a", "shared-name") == "a's"
    assert store.kv_get("a", "secret") == {"owner": "a"}
    assert store.kv_list("a") == ["secret", "shared-name"]
    assert store.used_bytes("b") == 0 and store.used_bytes("a") == kv_total(store.db, "a") > 0


JSON_VALUES = [
    {"nested": {"deeper": {"list": [1, [2, [3, {"x": None}]]], "empty": {}, "e": []}}, "z": 0, "a": 1},
    ["mixed", 1, 1.5, True, False, None, {"k": "v"}, []],
    "中文字符串，还有 emoji 😀🎉👩‍👩‍👧 and RTL עברית and \u2028 line sep and \t tab \n newline",
    {"键": "值", "😀": ["🎉"], "": "empty key", " ": "space key"},
    2 ** 63, -(2 ** 63), 2 ** 64 + 1, 10 ** 30, -(10 ** 40),
    0.1, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 1.0, 3.141592653589793, -2.5e-7,
    True, False, None, "", 0, [], {},
    {"bools": [True, False], "ints": [1, 0], "floats": [1.0, 0.0]},
    "'; DROP TABLE kv; --",
    nested(MAX_JSON_DEPTH),
    "x" * 100_000,
]


def test_kv_json_values_round_trip_exactly(store: Store):
    for i, value in enumerate(JSON_VALUES):
        store.kv_set("a", f"v{i}", value)
    for i, value in enumerate(JSON_VALUES):
        got = store.kv_get("a", f"v{i}")
        # Exact: same text once encoded, so True stays true (not 1), 1.0 stays a float, key order is kept.
        assert json.dumps(got, ensure_ascii=False) == json.dumps(value, ensure_ascii=False), i
        assert type(got) is type(value), i
        if isinstance(value, float):
            assert math.copysign(1, got) == math.copysign(1, value)
    # tuples are JSON arrays
    store.kv_set("a", "tuple", (1, "two", (3,)))
    assert store.kv_get("a", "tuple") == [1, "two", [3]]
    # overwrite with JSON null (a stored value, not SQL NULL) and back
    store.kv_set("a", "v0", None)
    assert store.kv_get("a", "v0") is None and "v0" in store.kv_list("a", "v0")
    store.kv_set("a", "v0", JSON_VALUES[0])
    assert store.kv_get("a", "v0") == JSON_VALUES[0]


def test_kv_sql_looking_text_is_stored_literally(store: Store):
    evil = "'; DROP TABLE kv; --"
    store.kv_set("a", evil, evil)
    store.kv_set("a", 'x" OR 1=1 --', {evil: [evil, "' OR '1'='1"]})
    store.kv_set("a", "normal", 1)
    assert store.kv_get("a", evil) == evil
    assert store.kv_get("a", 'x" OR 1=1 --') == {evil: [evil, "' OR '1'='1"]}
    assert set(store.kv_list("a")) == {evil, 'x" OR 1=1 --', "normal"}
    assert store.kv_list("a", "';") == [evil]
    with pytest.raises(NotFound):
        store.kv_get("a", "' OR '1'='1")
    store.kv_delete("a", evil)
    store.kv_set("a", "after", "the table still works")
    assert store.kv_get("a", "after") == "the table still works"
    assert raw_rows(store.db, "SELECT COUNT(*) FROM kv") == [(3,)]


def _deep_dict(depth: int) -> dict:
    v: dict = {}
    for _ in range(depth):
        v = {"d": v}
    return v


BAD_KV = [
    ("empty key", "", 1),
    ("NUL in key", "a\x00b", 1),
    ("control char in key", "a\nb", 1),
    ("key too long", "k" * 513, 1),
    ("non-string key", 42, 1),
    ("lone surrogate in key", "\ud800", 1),
    ("NUL in value", "k", "a\x00b"),
    ("NUL in nested value", "k", {"a": ["ok", "b\x00"]}),
    ("NUL in dict key", "k", {"a\x00": 1}),
    ("lone surrogate in value", "k", "\ud800"),
    ("lone surrogate in dict key", "k", {"x": {"\udfff": 1}}),
    ("NaN", "k", float("nan")),
    ("inf", "k", float("inf")),
    ("-inf nested", "k", {"a": [1.0, float("-inf")]}),
    ("int dict key", "k", {1: "x"}),
    ("nested non-string dict key", "k", {"a": {None: 1}}),
    ("tuple dict key", "k", {(1, 2): 1}),
    ("list nested too deep", "k", nested(MAX_JSON_DEPTH + 1)),
    ("dict nested too deep", "k", _deep_dict(MAX_JSON_DEPTH + 2)),
    ("over the size limit", "k", ["x" * (3 << 20)] * 3),
    ("bytes", "k", b"raw"),
    ("set", "k", {1, 2}),
    ("object", "k", object()),
    ("int too big to print", "k", 10 ** 5000),
]


def test_kv_bad_input_is_invalid_request_and_writes_nothing(store: Store):
    store.kv_set("a", "k", "original")
    before = store.used_bytes("a")
    for what, key, value in BAD_KV:
        with pytest.raises(InvalidRequest):
            store.kv_set("a", key, value)
            pytest.fail(f"accepted: {what}")
    assert len(json.dumps(dict((w, v) for w, _, v in BAD_KV)["over the size limit"])) > MAX_JSON_BYTES
    assert store.kv_get("a", "k") == "original"
    assert store.kv_list("a") == ["k"]
    assert store.used_bytes("a") == before == kv_total(store.db, "a")
    assert raw_rows(store.db, "SELECT COUNT(*) FROM kv") == [(1,)]
    for bad_key in ("", "a\x00b", "\ud800"):
        with pytest.raises(InvalidRequest):
            store.kv_get("a", bad_key)
        with pytest.raises(InvalidRequest):
            store.kv_delete("a", bad_key)
        if bad_key:
            with pytest.raises(InvalidRequest):
                store.kv_list("a", bad_key)


def test_kv_value_just_under_the_size_limit_is_accepted(store: Store):
    # the limit counts encoded bytes: two 3 MiB strings (+ the JSON punctuation) fit in 8 MiB
    value = ["é" * (3 << 19), "x" * (3 << 20)]  # é is 2 bytes in UTF-8: 3 MiB each
    store.kv_set("a", "big", value)
    assert store.kv_get("a", "big") == value
    assert store.used_bytes("a") == len(json.dumps(value, ensure_ascii=False).encode()) + len(b"big")


# -- quota --------------------------------------------------------------------------------------------------------

def test_storage_quota(store: Store):
    size = lambda key, value: len(json.dumps(value, ensure_ascii=False).encode()) + len(key.encode())  # noqa: E731
    limit = 300
    store.kv_set("a", "k1", "x" * 100, limit=limit)
    used = size("k1", "x" * 100)
    assert store.used_bytes("a") == used == 104
    with pytest.raises(QuotaExceeded):
        store.kv_set("a", "k2", "y" * 200, limit=limit)
    with pytest.raises(NotFound):
        store.kv_get("a", "k2")
    assert store.used_bytes("a") == used and store.kv_list("a") == ["k1"]
    store.kv_set("a", "k2", "y" * 150, limit=limit)  # 104 + 154 = 258: fits
    used += size("k2", "y" * 150)
    assert store.used_bytes("a") == used == 258
    # growing an existing value past the limit fails and keeps the old value
    with pytest.raises(QuotaExceeded):
        store.kv_set("a", "k2", "y" * 200, limit=limit)
    assert store.kv_get("a", "k2") == "y" * 150 and store.used_bytes("a") == 258
    # exactly at the limit is allowed
    store.kv_set("a", "k3", "z" * (limit - used - 4), limit=limit)
    assert store.used_bytes("a") == limit
    with pytest.raises(QuotaExceeded):
        store.kv_set("a", "k4", 1, limit=limit)
    # shrinking and deleting give bytes back, even when the quota is smaller than the usage now
    store.kv_set("a", "k2", "y", limit=10)
    assert store.used_bytes("a") == limit - 154 + size("k2", "y")
    store.kv_delete("a", "k3")
    store.kv_delete("a", "k1")
    assert store.used_bytes("a") == size("k2", "y") == kv_total(store.db, "a")
    # bytes used elsewhere (the app's files) count against the same limit
    with pytest.raises(QuotaExceeded):
        store.kv_set("a", "k5", "w", limit=100, extra_used=100)
    store.kv_set("a", "k5", "w", limit=100, extra_used=50)
    # documents share the app's usage
    store.doc_put("a", "c", "d", {"t": "x" * 40}, limit=100, extra_used=0)
    assert store.used_bytes("a") == kv_total(store.db, "a")
    with pytest.raises(QuotaExceeded):
        store.doc_put("a", "c", "d2", {"t": "x" * 100}, limit=100)
    with pytest.raises(NotFound):
        store.doc_get("a", "c", "d2")
    store.doc_delete("a", "c", "d")
    assert store.used_bytes("a") == kv_total(store.db, "a") == size("k2", "y") + size("k5", "w")
    # another app's usage is its own
    assert store.used_bytes("b") == 0
    store.kv_set("b", "k1", "x" * 100, limit=limit)
    store.kv_set("b", "k2", "x" * 150, limit=limit)
    assert store.used_bytes("b") == 258
    assert store.used_bytes("a") == size("k2", "y") + size("k5", "w")


def test_usage_stays_exact_under_concurrent_writers(store: Store, replica: Database):
    """Threads on two replicas writing, overwriting and deleting the same app's keys: no update is lost, and a
    quota is never overrun, however the writes interleave."""
    stores = [store, Store(replica)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        s = stores[t % 2]
        try:
            for j in range(15):
                s.kv_set("a", f"shared{j % 5}", "v" * (t * 7 + j))  # same keys from every thread
                s.kv_set("a", f"own{t}-{j}", "w" * j)
                if j % 3 == 0:
                    s.kv_delete("a", f"own{t}-{j}")
                with contextlib.suppress(QuotaExceeded):
                    s.kv_set("q", f"{t}-{j}", "z" * 20, limit=500)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert store.used_bytes("a") == kv_total(store.db, "a") > 0
    assert store.used_bytes("q") == kv_total(store.db, "q")
    assert 500 - 30 < store.used_bytes("q") <= 500  # filled up to the limit, never past it


# -- documents ----------------------------------------------------------------------------------------------------

def test_documents_put_get_find_delete(store: Store):
    docs = {
        "d1": {"kind": "note", "n": 1, "tags": ["a", "b"], "done": False},
        "d2": {"kind": "todo", "n": 2, "tags": ["a"], "done": True},
        "d3": {"kind": "note", "n": 3, "tags": ["a", "b"], "done": True, "meta": {"x": 1}},
        "d4": {"kind": "note", "n": 1.0, "done": 1},
    }
    for doc_id, body in docs.items():
        store.doc_put("a", "c", doc_id, body)
        time.sleep(0.002)  # distinct update times: "newest first" is well defined
    assert store.doc_get("a", "c", "d3") == docs["d3"]
    assert [d["id"] for d in store.doc_find("a", "c")] == ["d4", "d3", "d2", "d1"]
    assert store.doc_find("a", "c")[0] == {"id": "d4", "body": docs["d4"]}
    assert [d["id"] for d in store.doc_find("a", "c", {"kind": "note"})] == ["d4", "d3", "d1"]
    assert [d["id"] for d in store.doc_find("a", "c", {"kind": "note", "done": True})] == ["d3"]
    assert [d["id"] for d in store.doc_find("a", "c", {"done": 1})] == ["d4"]  # 1 is not true in JSON
    assert [d["id"] for d in store.doc_find("a", "c", {"done": False})] == ["d1"]
    assert [d["id"] for d in store.doc_find("a", "c", {"n": 1})] == ["d4", "d1"]  # 1 and 1.0: the same number
    assert [d["id"] for d in store.doc_find("a", "c", {"tags": ["a", "b"]})] == ["d3", "d1"]
    assert [d["id"] for d in store.doc_find("a", "c", {"meta": {"x": 1}})] == ["d3"]
    assert [d["id"] for d in store.doc_find("a", "c", {"meta": {"x": True}})] == []
    assert store.doc_find("a", "c", {"kind": "nope"}) == []
    assert [d["id"] for d in store.doc_find("a", "c", {"kind": "note"}, limit=2)] == ["d4", "d3"]
    # an update makes the document the newest
    time.sleep(0.002)
    store.doc_put("a", "c", "d1", {**docs["d1"], "n": 10})
    assert [d["id"] for d in store.doc_find("a", "c", limit=1)] == ["d1"]
    assert store.doc_get("a", "c", "d1")["n"] == 10
    assert store.doc_count("a", "c") == 4
    store.doc_delete("a", "c", "d1")
    with pytest.raises(NotFound):
        store.doc_get("a", "c", "d1")
    with pytest.raises(NotFound):
        store.doc_delete("a", "c", "d1")
    assert store.doc_count("a", "c") == 3
    assert store.used_bytes("a") == kv_total(store.db, "a")


def test_documents_validation(store: Store):
    store.doc_put("a", "c", "d", {"x": 1})
    for bad in (0, -3, 1001, True, "10", None, 1.5):
        with pytest.raises(InvalidRequest):
            store.doc_find("a", "c", limit=bad)
        with pytest.raises(InvalidRequest):  # even when nothing would match
            store.doc_find("a", "c", {"x": 999}, limit=bad)
    for where in ([1], "x", 5, {"x": float("nan")}, {1: 2}):
        with pytest.raises(InvalidRequest):
            store.doc_find("a", "c", where)
    for body in ([1, 2], "text", None, 3, {"x": "\x00"}, {"x": float("inf")}):
        with pytest.raises(InvalidRequest):
            store.doc_put("a", "c", "bad", body)
    for coll, doc_id in (("", "d"), ("c", ""), ("c\x00", "d"), ("c", "d\x00"), ("c" * 129, "d"), ("c", "d" * 257)):
        with pytest.raises(InvalidRequest):
            store.doc_put("a", coll, doc_id, {"x": 1})
    assert [d["id"] for d in store.doc_find("a", "c")] == ["d"]
    assert store.doc_count("a", "c") == 1


def test_documents_are_isolated_between_apps_and_collections(store: Store):
    store.doc_put("a", "c1", "d", {"who": "a/c1"})
    store.doc_put("a", "c2", "d", {"who": "a/c2"})
    store.doc_put("b", "c1", "d", {"who": "b/c1"})
    assert store.doc_get("a", "c1", "d") == {"who": "a/c1"}
    assert store.doc_get("a", "c2", "d") == {"who": "a/c2"}
    assert store.doc_get("b", "c1", "d") == {"who": "b/c1"}
    with pytest.raises(NotFound):
        store.doc_get("b", "c2", "d")
    with pytest.raises(NotFound):
        store.doc_delete("b", "c2", "d")
    assert store.doc_find("b", "c2") == []
    assert store.doc_find("b", "c1", {"who": "a/c1"}) == []
    assert [d["body"] for d in store.doc_find("a", "c1")] == [{"who": "a/c1"}]
    store.doc_delete("a", "c1", "d")
    assert store.doc_get("a", "c2", "d") == {"who": "a/c2"}
    assert store.doc_get("b", "c1", "d") == {"who": "b/c1"}
    assert (store.doc_count("a", "c1"), store.doc_count("a", "c2"), store.doc_count("b", "c1")) == (0, 1, 1)


# -- recall memory ------------------------------------------------------------------------------------------------

UNRELATED = [
    ("user", "What is the capital of France?"),
    ("assistant", "The capital of France is Paris."),
    ("user", "Can you recommend a good science fiction novel?"),
    ("assistant", "Try Dune by Frank Herbert."),
    ("user", "How do I change a flat tire on my bicycle?"),
    ("assistant", "Remove the wheel, replace the inner tube, and pump it up."),
    ("user", "What's the weather usually like in Iceland in winter?"),
]
VET = "I need to book my cat's veterinarian appointment for next Tuesday."


def test_recall_append_history_recent_count(recall: RecallMemory):
    ids = [recall.append("a", "s1", role, text, user="alice") for role, text in UNRELATED[:4]]
    assert ids == sorted(ids) and len(set(ids)) == 4
    sys_id = recall.append("a", "s1", "system", "You are helpful.", user="alice")
    tool_id = recall.append("a", "s1", "tool", "", user="alice", tokens=0)
    hist = recall.history("a", "s1")
    assert [m.id for m in hist] == [*ids, sys_id, tool_id]
    assert [(m.role, m.content) for m in hist[:4]] == UNRELATED[:4]
    assert hist[0].tokens == words(UNRELATED[0][1]) and hist[-1].tokens == 0
    assert all(m.session == "s1" for m in hist)
    assert [m.id for m in recall.history("a", "s1", limit=2, offset=1)] == ids[1:3]
    recent = recall.recent("a", "s1", limit=3)
    assert [m.id for m in recent] == [tool_id, sys_id, ids[3]]  # newest first
    assert [m.id for m in recall.recent("a", "s1", before_id=ids[2], limit=10)] == [ids[1], ids[0]]
    assert recall.recent("a", "s1", before_id=ids[0]) == []
    assert recall.count("a", "s1") == 6
    assert recall.count("a", "s1", below_id=ids[2]) == 2
    assert recall.count("a", "s1", above_id=ids[2]) == 3
    assert recall.count("a", "s1", below_id=sys_id, above_id=ids[0]) == 3
    assert recall.count("a", "nope") == 0
    for bad_role in ("admin", "", None):
        with pytest.raises(InvalidRequest):
            recall.append("a", "s1", bad_role, "x")
    for bad_session in ("", "s\x00", "s" * 129):
        with pytest.raises(InvalidRequest):
            recall.append("a", bad_session, "user", "x")
    for bad_content in ("a\x00b", "\ud800", 5):
        with pytest.raises(InvalidRequest):
            recall.append("a", "s1", "user", bad_content)
    assert recall.count("a", "s1") == 6


def test_recall_sessions(recall: RecallMemory):
    recall.append("a", "s-old", "user", "first", user="alice")
    time.sleep(0.01)
    recall.append("a", "s-bob", "user", "hello", user="bob")
    time.sleep(0.01)
    recall.append("a", "s-new", "user", "one", user="alice")
    recall.append("a", "s-new", "assistant", "two", user="alice")
    recall.append("b", "s-other-app", "user", "not yours", user="alice")
    all_sessions = recall.sessions("a")
    assert [s["session_id"] for s in all_sessions] == ["s-new", "s-bob", "s-old"]  # most recent first
    assert [s["messages"] for s in all_sessions] == [2, 1, 1]
    assert all(isinstance(s["last_at"], float) for s in all_sessions)
    assert [s["session_id"] for s in recall.sessions("a", user="alice")] == ["s-new", "s-old"]
    assert [s["session_id"] for s in recall.sessions("a", user="carol")] == []
    assert [s["session_id"] for s in recall.sessions("b")] == ["s-other-app"]


def test_recall_search_by_embedding(recall: RecallMemory):
    turns = [*UNRELATED[:4], ("user", VET), *UNRELATED[4:]]
    ids = recall.append_many("a", "s1", turns, user="alice")
    vet_id = ids[4]
    hits = recall.search("a", "pet doctor visit", k=3)
    assert hits[0].id == vet_id and hits[0].text == VET and hits[0].source == "recall"
    assert hits[0].role == "user" and hits[0].meta == {"session_id": "s1"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score > hits[1].score + 0.1
    # within one session, and with the newest turns excluded
    recall.append("a", "s2", "user", "My dog has a vet check-up tomorrow.")
    assert recall.search("a", "pet doctor visit", k=1, session="s1")[0].id == vet_id
    assert recall.search("a", "pet doctor visit", k=1, session="s2")[0].text.startswith("My dog")
    assert all(h.id < vet_id for h in recall.search("a", "pet doctor visit", k=10, session="s1", exclude_from=vet_id))
    assert recall.search("a", "pet doctor visit", k=5, session="s1", exclude_from=ids[0]) == []
    assert len(recall.search("a", "anything", k=100)) == len(turns) + 1
    for bad_k in (0, 101, True, "3"):
        with pytest.raises(InvalidRequest):
            recall.search("a", "q", k=bad_k)
    with pytest.raises(InvalidRequest):
        recall.search("a", "")


def test_recall_search_text(recall: RecallMemory):
    ids = recall.append_many("a", "s1", [
        ("user", VET),
        ("assistant", "Booked the CAT for Tuesday at 10."),
        ("user", "I am 100% sure."),
        ("user", "I am 100 percent sure."),
        ("user", "use snake_case names"),
        ("user", "use snakeXcase names"),
        ("user", "Je vais à l'ÉCOLE demain, ПРИВЕТ"),
        ("user", "我的猫需要看兽医"),
        ("user", "back\\slash"),
    ])
    assert [h.id for h in recall.search_text("a", "cat tuesday")] == [ids[1], ids[0]]  # newest first
    assert [h.id for h in recall.search_text("a", "VETERINARIAN")] == [ids[0]]
    assert recall.search_text("a", "cat pizza") == []  # every word must be there
    assert [h.id for h in recall.search_text("a", "100%")] == [ids[2]]
    assert [h.id for h in recall.search_text("a", "snake_case")] == [ids[4]]
    assert [h.id for h in recall.search_text("a", "e_c")] == [ids[4]]
    assert [h.id for h in recall.search_text("a", "%")] == [ids[2]]
    assert [h.id for h in recall.search_text("a", "_")] == [ids[4]]
    assert [h.id for h in recall.search_text("a", "école привет")] == [ids[6]]  # Unicode case folding
    assert [h.id for h in recall.search_text("a", "猫")] == [ids[7]]
    assert [h.id for h in recall.search_text("a", "back\\slash")] == [ids[8]]
    assert [h.id for h in recall.search_text("a", "sure", k=1)] == [ids[3]]
    assert recall.search_text("a", "cat", session="other") == []
    hit = recall.search_text("a", "booked")[0]
    assert (hit.text, hit.role, hit.meta, hit.source) == ("Booked the CAT for Tuesday at 10.", "assistant",
                                                          {"session_id": "s1"}, "recall")
    for bad in ("", "a\x00", "x" * 1001):
        with pytest.raises(InvalidRequest):
            recall.search_text("a", bad)


def test_recall_is_isolated_between_apps(recall: RecallMemory):
    recall.append("a", "s1", "user", VET, user="alice")
    recall.append("a", "s1", "assistant", "Booked.", user="alice")
    recall.append("b", "s-b", "user", "What is the capital of France?")
    assert [h.text for h in recall.search("b", "pet doctor visit", k=5)] == ["What is the capital of France?"]
    assert recall.search_text("b", "veterinarian") == []
    assert recall.history("b", "s1") == [] and recall.recent("b", "s1") == []
    assert recall.count("b", "s1") == 0
    assert [s["session_id"] for s in recall.sessions("b")] == ["s-b"]
    # the same session name in another app is another session
    recall.append("b", "s1", "user", "b's own turn")
    assert [m.content for m in recall.history("b", "s1")] == ["b's own turn"]
    assert recall.count("a", "s1") == 2
    assert recall.search("c", "anything") == []


def test_recall_append_many(recall: RecallMemory):
    assert recall.append_many("a", "s1", []) == []
    ids = recall.append_many("a", "s1", UNRELATED, user="alice")
    assert len(ids) == len(UNRELATED) and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [(m.role, m.content) for m in recall.history("a", "s1")] == UNRELATED
    assert [m.tokens for m in recall.history("a", "s1")] == [words(c) for _, c in UNRELATED]
    assert recall.search("a", "Icelandic climate in December", k=1)[0].id == ids[6]
    # one bad turn anywhere: nothing is written
    for bad in ([("user", "ok"), ("user", "fine"), ("bogus", "x")],
                [("user", "ok"), ("user", "fine"), ("user", "nul\x00")],
                [("user", "ok"), ("user", "fine"), ("user", "\udc00")]):
        with pytest.raises(InvalidRequest):
            recall.append_many("a", "s1", bad)
    with pytest.raises(InvalidRequest):
        recall.append_many("a", "", [("user", "ok")])
    assert recall.count("a", "s1") == len(UNRELATED)
    assert raw_rows(recall.db, "SELECT COUNT(*) FROM messages") == [(len(UNRELATED),)]


# -- archival memory ----------------------------------------------------------------------------------------------

FACTS = [
    ("The user is allergic to peanuts.", {"topic": "health", "year": 2023}, ""),
    ("The user's favourite food is spicy ramen.", {"topic": "food", "year": 2024}, ""),
    ("The user visited Kyoto in the spring.", {"topic": "travel", "year": 2024}, ""),
    ("Alice's daughter plays the violin.", {"topic": "family", "year": 2024}, "alice"),
    ("Alice prefers window seats on flights.", {"topic": "travel", "year": 2022}, "alice"),
    ("Bob's password hint is his first car.", {"topic": "secrets", "year": 2024}, "bob"),
    ("Bob is training for a marathon.", {"topic": "health", "year": 2024}, "bob"),
]


def _insert_facts(arch: ArchivalMemory, app: str = "a") -> dict[str, int]:
    out = {}
    for user in ("", "alice", "bob"):
        rows = [(t, m) for t, m, u in FACTS if u == user]
        ids = arch.insert_many(app, [t for t, _ in rows], [m for _, m in rows], user=user)
        out.update({t: i for (t, _), i in zip(rows, ids, strict=True)})
    return out


def test_archival_insert_and_search(archive: ArchivalMemory):
    ids = _insert_facts(archive)
    one = archive.insert("a", "The user's cat is called Miso.", {"topic": "pets"})
    assert one > max(ids.values())
    assert archive.count("a") == len(FACTS) + 1
    hits = archive.search("a", "what should I avoid eating because of allergies?", k=3)
    assert hits[0].text == "The user is allergic to peanuts." and hits[0].source == "archival"
    assert hits[0].meta == {"topic": "health", "year": 2023} and hits[0].id == ids[hits[0].text]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert archive.search("a", "name of my kitten", k=1)[0].id == one
    everything = archive.search("a", "anything at all", k=100)
    assert len(everything) == len(FACTS) + 1
    assert [h.score for h in everything] == sorted((h.score for h in everything), reverse=True)
    for bad_k in (0, 101, False):
        with pytest.raises(InvalidRequest):
            archive.search("a", "q", k=bad_k)


def test_archival_metadata_filters(archive: ArchivalMemory):
    _insert_facts(archive)
    travel = archive.search("a", "holidays", k=10, filters={"topic": "travel"})
    assert {h.text for h in travel} == {"The user visited Kyoto in the spring.", "Alice prefers window seats on flights."}
    both = archive.search("a", "holidays", k=10, filters={"topic": ["travel", "food"]})
    assert {h.meta["topic"] for h in both} == {"travel", "food"} and len(both) == 3
    assert {h.text for h in archive.search("a", "q", k=10, filters={"topic": "travel", "year": 2024})} == {
        "The user visited Kyoto in the spring."}
    assert archive.search("a", "q", k=10, filters={"topic": "nope"}) == []
    assert archive.search("a", "q", k=10, filters={"year": [2022, 2023], "topic": "health"})[0].meta["year"] == 2023
    assert len(archive.search("a", "q", k=2, filters={"year": 2024})) == 2
    archive.insert("a", "A flagged item.", {"flag": True, "n": 1})
    assert len(archive.search("a", "q", k=10, filters={"flag": True})) == 1
    assert archive.search("a", "q", k=10, filters={"flag": 1}) == []  # JSON true is not the number 1
    assert archive.search("a", "q", k=10, filters={"n": [True]}) == []
    assert len(archive.search("a", "q", k=10, filters={"n": 1.0})) == 1
    for bad in ([1], {"x": float("nan")}, {"x": "\x00"}):
        with pytest.raises(InvalidRequest):
            archive.search("a", "q", filters=bad)


def test_archival_user_scoping(archive: ArchivalMemory):
    _insert_facts(archive)
    app_wide = {t for t, _, u in FACTS if u == ""}
    alice = {h.text for h in archive.search("a", "tell me everything", k=100, user="alice")}
    assert alice == app_wide | {t for t, _, u in FACTS if u == "alice"}
    bob = {h.text for h in archive.search("a", "password hint", k=100, user="bob")}
    assert bob == app_wide | {t for t, _, u in FACTS if u == "bob"}
    assert not any("Bob" in t for t in alice) and not any("Alice" in t for t in bob)
    # alice asking exactly for bob's secret still never gets it
    assert all("password" not in h.text for h in archive.search("a", "Bob's password hint", k=100, user="alice"))
    assert {h.text for h in archive.search("a", "anything", k=100, user="carol")} == app_wide
    assert {h.text for h in archive.search("a", "anything", k=100, user="")} == app_wide
    assert len(archive.search("a", "anything", k=100)) == len(FACTS)  # no user: the whole app (the admin)
    # filters and scope together
    assert [h.text for h in archive.search("a", "q", k=10, user="alice", filters={"topic": "health"})] == [
        "The user is allergic to peanuts."]


def test_archival_delete_count_and_app_isolation(archive: ArchivalMemory):
    ids = _insert_facts(archive)
    b_id = archive.insert("b", "App b's private note about peanuts.")
    assert archive.count("a") == len(FACTS) and archive.count("b") == 1
    assert {h.text for h in archive.search("b", "peanuts allergy", k=100)} == {"App b's private note about peanuts."}
    assert all(h.id != b_id for h in archive.search("a", "App b's private note about peanuts", k=100))
    with pytest.raises(NotFound):
        archive.delete("b", ids["The user is allergic to peanuts."])  # another app's item does not exist
    with pytest.raises(NotFound):
        archive.delete("a", b_id)
    peanut = ids["The user is allergic to peanuts."]
    assert archive.search("a", "peanut allergy", k=1)[0].id == peanut
    archive.delete("a", peanut)
    with pytest.raises(NotFound):
        archive.delete("a", peanut)
    assert all(h.id != peanut for h in archive.search("a", "peanut allergy", k=100))
    assert archive.count("a") == len(FACTS) - 1 and archive.count("b") == 1
    with pytest.raises(NotFound):
        archive.delete("a", 10 ** 9)


def test_archival_insert_many_is_all_or_nothing(archive: ArchivalMemory):
    archive.insert("a", "Already here.")
    bad_batches = [
        (["ok one", "ok two", ""], None),
        (["ok one", "ok two", "nul \x00"], None),
        (["ok one", "ok two", "\ud800"], None),
        (["ok one", "ok two", 3], None),
        (["ok one", "ok two", "ok three"], [{}, {}, {"x": float("nan")}]),
        (["ok one", "ok two", "ok three"], [{}, {}, "not a dict"]),
        (["ok one", "ok two", "ok three"], [{}, {}]),  # one metadata object short
        ([], None),
        ("not a list", None),
    ]
    for texts, metas in bad_batches:
        with pytest.raises(InvalidRequest):
            archive.insert_many("a", texts, metas)
    assert archive.count("a") == 1
    assert raw_rows(archive.db, "SELECT text FROM archival") == [("Already here.",)]


# -- the vector index across replicas ---------------------------------------------------------------------------

def test_vector_index_follows_writes_from_another_replica(database: Database, replica: Database, embed):
    v1, v2 = VectorIndex(database, embed.dim), VectorIndex(replica, embed.dim)
    a1, a2 = ArchivalMemory(database, v1, embed), ArchivalMemory(replica, v2, embed)
    first = a1.insert_many("a", ["The user lives in Lisbon.", "The user works as a nurse.",
                                 "The user drinks oat milk."])
    assert a2.search("a", "where does the user live?", k=1)[0].id == first[0]
    scope2 = v2._scopes[("archival", (("app", "a"),))]
    assert list(scope2.ids) == first
    # replica 1 writes more: replica 2 catches up incrementally (same cached scope, extended)
    more = a1.insert_many("a", ["The user is learning to play the cello.", "The user has two sisters."])
    hit = a2.search("a", "which musical instrument?", k=1)[0]
    assert hit.id == more[0] and hit.text == "The user is learning to play the cello."
    assert v2._scopes[("archival", (("app", "a"),))] is scope2 and list(scope2.ids) == first + more
    # a delete through replica 1 disappears from replica 2's results
    a1.delete("a", more[0])
    assert all(h.id != more[0] for h in a2.search("a", "which musical instrument?", k=10))
    assert len(a2.search("a", "anything", k=100)) == 4
    # delete the newest row through replica 2: replica 1 (which cached it) drops it too
    assert a1.search("a", "siblings", k=1)[0].id == more[1]
    a2.delete("a", more[1])
    assert all(h.id != more[1] for h in a1.search("a", "siblings", k=10))
    # a delete and an insert between two searches (the row count is unchanged)
    a2.search("a", "warm up", k=1)
    a1.delete("a", first[1])
    new = a1.insert("a", "The user is a professional chess player.")
    hits = a2.search("a", "board games", k=10)
    assert hits[0].id == new and all(h.id != first[1] for h in hits)
    assert sorted(h.id for h in hits) == sorted([first[0], first[2], new])
    # the newest row deleted and a new one written (SQLite gives it the same id): the new text's own vector
    a2.search("a", "warm up", k=1)
    a1.search("a", "warm up", k=1)
    a1.delete("a", new)
    newer = a1.insert("a", "The user is allergic to shellfish.")
    for arch in (a1, a2):
        hit = arch.search("a", "food allergy", k=1)[0]
        assert (hit.id, hit.text) == (newer, "The user is allergic to shellfish.") and hit.score > 0.4
        assert all(h.id != new or h.id == newer for h in arch.search("a", "board games", k=10))
    # recall memory's per-session scopes too
    r1 = RecallMemory(database, v1, embed, words)
    r2 = RecallMemory(replica, v2, embed, words)
    r1.append("a", "s", "user", "What is the capital of France?")
    assert len(r2.search("a", "France", k=5, session="s")) == 1
    vet = r1.append("a", "s", "user", VET)
    assert r2.search("a", "pet doctor visit", k=1, session="s")[0].id == vet
    assert r2.search("a", "pet doctor visit", k=1)[0].id == vet
    # replicas see the same rows in the same database
    assert raw_rows(replica, "SELECT COUNT(*) FROM archival") == [(a1.count("a"),)]
    assert {r[0] for r in raw_rows(replica, "SELECT id FROM messages")} == {
        m.id for m in r1.history("a", "s")}
    assert archival.name == "archival" and messages.name == "messages"


# -- core memory and summaries ------------------------------------------------------------------------------------

def test_core_memory(database: Database):
    core = CoreMemory(database)
    core.set("a", "persona", "You are a cheerful assistant.")
    core.set("a", "facts", "App-wide facts.")
    core.set("a", "facts", "Alice likes tea.", user="alice")
    core.set("a", "alice-only", "Only for Alice.", user="alice")
    core.set("b", "persona", "App b's persona.")
    assert core.get_all("a") == {"facts": "App-wide facts.", "persona": "You are a cheerful assistant."}
    assert core.get_all("a", "alice") == {"alice-only": "Only for Alice.", "facts": "Alice likes tea.",
                                          "persona": "You are a cheerful assistant."}
    assert core.get_all("a", "bob") == core.get_all("a")
    assert core.get_all("b", "alice") == {"persona": "App b's persona."}
    assert core.get_all("c") == {}
    core.set("a", "persona", "Now grumpy.")
    assert core.get_all("a", "alice")["persona"] == "Now grumpy."
    core.delete("a", "facts", user="alice")
    assert core.get_all("a", "alice")["facts"] == "App-wide facts."
    with pytest.raises(NotFound):
        core.delete("a", "facts", user="alice")
    with pytest.raises(NotFound):
        core.delete("b", "facts")
    core.delete("a", "facts")
    assert "facts" not in core.get_all("a", "alice")
    core.set("a", "big", "x" * CoreMemory.MAX_BLOCK)
    assert len(core.get_all("a")["big"]) == CoreMemory.MAX_BLOCK
    for label, value in (("big", "x" * (CoreMemory.MAX_BLOCK + 1)), ("", "v"), ("l" * 65, "v"), ("l", "\x00"),
                         ("l", "\ud800"), ("l", 5)):
        with pytest.raises(InvalidRequest):
            core.set("a", label, value)
    assert len(core.get_all("a")["big"]) == CoreMemory.MAX_BLOCK
    core.set("a", "unicode", "记住：用户喜欢 🍵")
    assert core.get_all("a")["unicode"] == "记住：用户喜欢 🍵"


def test_summary_store(database: Database):
    summaries = SummaryStore(database)
    assert summaries.get("a", "s1") is None
    summaries.set("a", "s1", Summary("The user asked about cats. 猫.", 6, 41))
    assert summaries.get("a", "s1") == Summary("The user asked about cats. 猫.", 6, 41)
    summaries.set("a", "s1", Summary("Longer now.", 2, 97))
    assert summaries.get("a", "s1") == Summary("Longer now.", 2, 97)
    assert summaries.get("a", "s2") is None and summaries.get("b", "s1") is None
    summaries.set("b", "s1", Summary("b's", 1, 3))
    assert summaries.get("a", "s1").text == "Longer now." and summaries.get("b", "s1").text == "b's"
    with pytest.raises(InvalidRequest):
        summaries.set("a", "s1", Summary("nul\x00", 1, 1))
    assert summaries.get("a", "s1") == Summary("Longer now.", 2, 97)


# -- audit log ----------------------------------------------------------------------------------------------------

def test_audit_record_and_query(database: Database):
    log = AuditLog(database)
    log.record(principal="a", app="a", call="storage.kv_set", args={"key": "k"}, decision="allowed", tokens=3,
               latency_ms=1.5, pid=7, flags={"pii": ["email"]})
    log.record(principal="b", app="b", call="storage.kv_get", args={"key": "k"}, decision="allowed")
    log.record(principal="a/alice", app="a", call="llm.chat", args={"m": 1}, decision="denied",
               detail="quota for alice@example.com\x00 exceeded")
    time.sleep(0.01)
    cut = time.time()
    log.record(principal="a", app="a", call="storage.kv_get", args=["x"], decision="failed", detail="\ud800 bad")
    log.record(principal="admin", app=None, call="apps.install", args={}, decision="allowed")
    rows = log.query(app="a")
    assert [r["call"] for r in rows] == ["storage.kv_get", "llm.chat", "storage.kv_set"]  # newest first
    assert all(r["app"] == "a" for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    first = rows[-1]
    assert (first["principal"], first["decision"], first["tokens"], first["latency_ms"], first["pid"]) == (
        "a", "allowed", 3, 1.5, 7)
    assert first["flags"] == {"pii": ["email"]} and len(first["args_digest"]) == 32 and "k" not in first["args_digest"]
    assert rows[1]["detail"] == "quota for [EMAIL] exceeded"  # redacted, NUL dropped
    assert "\ud800" not in rows[0]["detail"]
    assert [r["call"] for r in log.query(app="b")] == ["storage.kv_get"]
    assert log.query(app="c") == []
    assert len(log.query()) == 5  # the admin sees everything
    assert [r["call"] for r in log.query(app="a", call="storage.kv_get")] == ["storage.kv_get"]
    assert [r["principal"] for r in log.query(app="a", decision="denied")] == ["a/alice"]
    assert [r["call"] for r in log.query(app="a", since=cut)] == ["storage.kv_get"]
    assert [r["call"] for r in log.query(app="a", until=cut)] == ["llm.chat", "storage.kv_set"]
    assert len(log.query(app="a", limit=1)) == 1
    for bad in (0, 10001, "5", None):
        with pytest.raises(InvalidRequest):
            log.query(limit=bad)


def test_audit_is_append_only_in_the_database(database: Database):
    log = AuditLog(database)
    log.record(principal="a", app="a", call="storage.kv_set", args={"k": 1}, decision="allowed")
    before = raw_rows(database, "SELECT * FROM audit")
    assert len(before) == 1
    statements = ["UPDATE audit SET decision = 'denied'", "UPDATE audit SET app = 'b' WHERE id > 0",
                  "DELETE FROM audit", "DELETE FROM audit WHERE app = 'a'"]
    if database.dialect == "postgresql":
        statements.append("TRUNCATE audit")
    for sql in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), database.engine.begin() as conn:
            conn.execute(sa.text(sql))
    assert raw_rows(database, "SELECT * FROM audit") == before
    log.record(principal="a", app="a", call="storage.kv_get", args={}, decision="allowed")  # appending still works
    assert len(log.query(app="a")) == 2


def test_ids_are_never_reused_after_a_delete(database: Database):
    """A client holding an old id must never reach a newer item through it (SQLite AUTOINCREMENT)."""
    now = time.time()
    with database.engine.begin() as conn:
        ids = [conn.execute(sa.insert(archival).values(app="a", user="", text=f"t{i}", meta={}, embedding=b"\0" * 4,
                                                       created_at=now).returning(archival.c.id)).scalar_one()
               for i in range(2)]
        conn.execute(sa.delete(archival).where(archival.c.id == ids[-1]))
        new = conn.execute(sa.insert(archival).values(app="a", user="", text="t2", meta={}, embedding=b"\0" * 4,
                                                      created_at=now).returning(archival.c.id)).scalar_one()
    assert new > ids[-1]


# -- API keys -----------------------------------------------------------------------------------------------------

def test_keystore(database: Database):
    keys = KeyStore(database)
    assert not keys.any_keys()
    app_id, app_key = keys.create(Principal.for_app("notes"))
    user_id, user_key = keys.create(Principal.for_app("notes", "alice"))
    other_id, other_key = keys.create(Principal.for_app("other"))
    admin_id, admin_key = keys.create(ADMIN)
    assert keys.any_keys()
    assert keys.authenticate(app_key) == Principal("app", "notes", "")
    assert keys.authenticate(user_key) == Principal("user", "notes", "alice")
    assert keys.authenticate(other_key) == Principal("app", "other", "")
    assert keys.authenticate(admin_key) == ADMIN and keys.authenticate(admin_key).is_admin
    assert all(k.startswith(KEY_PREFIX) for k in (app_key, user_key, admin_key))

    # the key is never stored: only its sha256
    rows = raw_rows(database, "SELECT * FROM api_keys")
    assert len(rows) == 4
    secrets = [k.split("-", 2)[2] for k in (app_key, user_key, other_key, admin_key)]
    for row in rows:
        for cell in row:
            for key, secret in zip((app_key, user_key, other_key, admin_key), secrets, strict=True):
                assert key not in str(cell) and secret not in str(cell)
    hashes = {r[0] for r in raw_rows(database, "SELECT key_hash FROM api_keys")}
    for key in (app_key, user_key, other_key, admin_key):
        assert hashlib.sha256(key.encode()).hexdigest() in hashes

    # wrong, garbled, foreign: all the same AuthenticationError
    other_secret = other_key.split("-", 2)[2]
    bad_keys = ["", "llmos-", "not-a-key", app_key[:-1], app_key + "x", app_key.upper(), " " + app_key,
                f"{KEY_PREFIX}{app_id}-{other_secret}", f"{KEY_PREFIX}{app_id}", f"{KEY_PREFIX}{'0' * 12}-abc",
                f"{KEY_PREFIX}' OR '1'='1-x", app_key + "\x00", "\ud800", KEY_PREFIX + "x" * 300, None, 12345,
                app_key.encode(), f"{KEY_PREFIX}ab\x00cd-x", f"{KEY_PREFIX}\ud800-x", app_key[:-1] + "\udcff",
                f"{KEY_PREFIX}{app_id}\n-x"]
    for bad in bad_keys:
        with pytest.raises(AuthenticationError):
            keys.authenticate(bad)

    # list and revoke, per app
    assert {k["key_id"] for k in keys.list("notes")} == {app_id, user_id}
    assert {k["key_id"] for k in keys.list()} == {app_id, user_id, other_id, admin_id}
    listed = keys.list("notes")
    assert all(set(k) == {"key_id", "role", "app", "user", "created_at", "revoked_at"} for k in listed)
    assert all(k["revoked_at"] is None for k in listed)
    with pytest.raises(NotFound):
        keys.revoke(other_id, app="notes")  # an app cannot revoke another app's key
    assert keys.authenticate(other_key).app == "other"
    keys.revoke(user_id, app="notes")
    with pytest.raises(AuthenticationError):
        keys.authenticate(user_key)
    with pytest.raises(NotFound):
        keys.revoke(user_id, app="notes")  # already revoked
    with pytest.raises(NotFound):
        keys.revoke("nosuchkey")
    assert keys.authenticate(app_key).app == "notes"  # the app's other key still works
    assert next(k for k in keys.list("notes") if k["key_id"] == user_id)["revoked_at"] is not None
    keys.revoke(admin_id)
    with pytest.raises(AuthenticationError):
        keys.authenticate(admin_key)
    for bad in (Principal("app", "", ""), Principal("app", "x\x00", ""), Principal("user", "notes", "a\nb")):
        with pytest.raises(InvalidRequest):
            keys.create(bad)
    assert len(raw_rows(database, "SELECT * FROM api_keys")) == 4



def test_pgvector_is_detected_and_its_literal_form(database: Database):
    """The pgvector path cannot run here (Debian's PostgreSQL has no pgvector): what can be checked is that it is
    detected as absent, so search stays in-process, and the text form it would send."""
    from llmasos.system.storage.db import vector_literal

    assert database.pgvector is False and database.has_pgvector() is False
    vec = np.array([0.5, -1.25, 3e-8], np.float32)
    assert vector_literal(vec.tobytes()) == vector_literal(vec) == "[0.5,-1.25,3e-08]"

"""The system layer's hot paths: building a turn's context from a long session, and the cost of a system call.

    .venv/bin/python benchmarks/bench_system.py                       # SQLite and the local PostgreSQL server
    .venv/bin/python benchmarks/bench_system.py --turns 2000 --calls 10 --no-pg     # a quick look
    .venv/bin/python benchmarks/bench_system.py --json bench_out/system.json

1. Context build: one session of `--turns` stored turns (10-60 word messages, bulk-inserted with real
   all-MiniLM-L6-v2 embeddings through `RecallMemory.append_many`), a rolling summary covering all but the newest
   10% of them, two core-memory blocks and `--archival` archival items. `ContextBuilder.build` with the default
   model's (SmolLM2) real tokenizer and chat template, windows 2048 and 8192, max_tokens 256, `--calls` builds
   with different user messages: median and p95 (target: under 50 ms), plus the first, cold build (it loads the
   session's and the app's vectors into memory). A second pass, with every part timed, shows where the time goes:
   embedding the query, the vector index (its sync query plus the numpy scan), the other database reads, the
   tokenizer (encode and decode) and the chat template.
2. System calls through a real `OS` booted without a model (`load_model=False`): `tools.call` of `current_time`,
   `storage.kv_get`, and `memory.archival_search` over `--archival-search-items` items, each against the same
   work done directly (the tool function; `Store.kv_get`; `ArchivalMemory.search`). "in loop" is an app handler's
   view (awaited on the OS's event loop); "os.call" adds the hop from a synchronous caller's thread.

Every embedding is computed once per run and reused for the second database (PostgreSQL is given its own schema,
dropped at the end). Times are wall clock on this machine; the thread count is torch's (the embedder's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model, percentile  # noqa: E402

DEFAULT_PG_URL = os.environ.get("LLMASOS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CTX_APP, SESSION, SYS_APP = "bench-ctx", "long-session", "assistant"
TARGET_MS = 50.0

_WORDS = ("I you we they it the a an this that my your our some any every each other more most few many much "
         "think know want need like love hate prefer remember forget decide plan try start finish move call send "
         "book buy sell pay cost keep change fix break build write read check review meet visit travel cook "
         "eat drink sleep work study learn teach run walk drive fly ship harbor ferry train bus ticket budget "
         "invoice report meeting council project deadline week month Tuesday Friday morning evening weather "
         "rain storm sun garden kitchen recipe garlic tomato coffee tea doctor appointment sister brother "
         "friend manager team client contract price discount option plan schedule problem answer question "
         "idea reason because although but and or so then also really quite very maybe probably today "
         "tomorrow yesterday soon later again already still only just about around after before during "
         "with without for from into onto over under between through lighthouse market dock volcano river "
         "mountain city village museum library school hospital bank office printer laptop phone battery "
         "screen password account email message photo video music concert film book chapter")
WORDS = _WORDS.split(" ")
TOPICS = ["the harbor renovation", "my trip to Lisbon", "the quarterly budget", "a pasta recipe", "learning Spanish",
          "the new ferry timetable", "my sister's wedding", "the printer that keeps jamming", "a running plan",
          "the garden fence", "the client contract", "my laptop battery", "the museum visit", "a birthday gift"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    at = rng.randrange(len(words))
    words[at:at] = rng.choice(TOPICS).split()
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", "?", "!"])


def make_turns(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [("user" if i % 2 == 0 else "assistant", sentence(rng, 8, 55)) for i in range(n)]


def make_questions(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"What did we say about {rng.choice(TOPICS)}? " + sentence(rng, 4, 20) for _ in range(n)]


class CachedEmbed:
    """The real embedder, each text embedded once per run (the second database reuses the vectors)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.cache: dict[str, Any] = {}

    def __call__(self, texts: list[str]):  # noqa: ANN204
        import numpy as np

        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for t, v in zip(todo, self.embedder.embed(todo), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


def stats_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples_s]
    return {"median_ms": statistics.median(ms), "p95_ms": percentile(ms, 95), "mean_ms": statistics.fmean(ms)}


class Breakdown:
    """Exclusive wall time per category: wrapped methods charge their own time, not their callees'."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []
        self.paused = False  # while set, wrapped methods run untimed
        self._undo: list[Callable[[], None]] = []

    def wrap(self, obj: Any, name: str, category: str) -> None:
        fn = getattr(obj, name)
        had_own = name in vars(obj)

        def timed(*a: Any, **k: Any) -> Any:
            if self.paused:
                return fn(*a, **k)
            now = time.perf_counter()
            if self.stack:
                self.t[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([category, now])
            self.calls[category] += 1
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                cat, start = self.stack.pop()
                self.t[cat] += end - start
                if self.stack:
                    self.stack[-1][1] = end

        setattr(obj, name, timed)
        self._undo.append(lambda: setattr(obj, name, fn) if had_own else delattr(obj, name))

    def unwrap(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


BREAKDOWN_COLS = ["query embedding", "vector index", "db reads", "tokenizer", "chat template", "other"]


# -- 1. context build ------------------------------------------------------------------------------------------

def setup_context(db: Any, codec: Any, embed: CachedEmbed, dim: int, args: argparse.Namespace,
                  progress: Any) -> Any:
    from llmasos.apps.assistant import SYSTEM_PROMPT
    from llmasos.system.memory.context import ContextBuilder
    from llmasos.system.memory.stores import ArchivalMemory, CoreMemory, RecallMemory, Summary, SummaryStore
    from llmasos.system.storage.vectors import VectorIndex

    vectors = VectorIndex(db, dim)
    recall = RecallMemory(db, vectors, embed, codec.count)
    archival = ArchivalMemory(db, vectors, embed)
    core, summaries = CoreMemory(db), SummaryStore(db)
    turns = make_turns(args.turns)
    ids: list[int] = []
    task = progress.add_task(f"{db.dialect}: storing {args.turns} turns (embedding them)", total=len(turns))
    for start in range(0, len(turns), args.batch):
        ids += recall.append_many(CTX_APP, SESSION, turns[start:start + args.batch])
        progress.update(task, advance=len(turns[start:start + args.batch]))
    task = progress.add_task(f"{db.dialect}: {args.archival} archival items", total=args.archival)
    facts = [t for _, t in make_turns(args.archival, seed=7)]
    for start in range(0, len(facts), args.batch):
        archival.insert_many(CTX_APP, facts[start:start + args.batch])
        progress.update(task, advance=len(facts[start:start + args.batch]))
    rng = random.Random(3)
    summary = " ".join(sentence(rng, 10, 30) for _ in range(12))
    summaries.set(CTX_APP, SESSION, Summary(summary, codec.count(summary), ids[int(len(ids) * 0.9)]))
    core.set(CTX_APP, "persona", "The user is a harbor engineer in Porto who likes short, concrete answers.")
    core.set(CTX_APP, "preferences", "Prefers metric units. Vegetarian. Has a sister, Aurelia, in Reykjavik.")
    # Queries are embedded for real on every build: no cache from here on.
    recall.embed = archival.embed = embed.embedder.embed
    builder = ContextBuilder(codec, recall, archival, core, summaries)
    builder.system_prompt = SYSTEM_PROMPT
    return builder


PATHS = {"new": "new message (query embedded)", "chat": "llm.chat path (message stored first)"}


def bench_context(builder: Any, backend: str, args: argparse.Namespace, progress: Any) -> tuple[list, list]:
    """Per window, two paths: a message that is not stored (`memory.context`: the query is embedded), and the
    llm.chat path (the message is appended first, with its embedding, and the build reuses that embedding)."""
    questions = make_questions(args.calls + 1)
    rows, breakdowns = [], []
    for window in args.windows:
        for path, path_label in PATHS.items():
            def build(q: str, before_id: int | None, window: int = window) -> Any:
                return builder.build(CTX_APP, SESSION, q, window=window, max_tokens=args.max_tokens,
                                     system_prompt=builder.system_prompt, before_id=before_id)

            def stored(q: str, path: str = path) -> int | None:
                return builder.recall.append(CTX_APP, SESSION, "user", q) if path == "chat" else None

            t = time.perf_counter()
            first = build(questions[-1], stored(questions[-1]))
            cold = time.perf_counter() - t
            task = progress.add_task(f"{backend}: context build, window {window}, {path_label}", total=2 * args.calls)
            samples, appends, reports = [], [], []
            for q in questions[:args.calls]:
                t = time.perf_counter()
                mid = stored(q)
                t1 = time.perf_counter()
                res = build(q, mid)
                samples.append(time.perf_counter() - t1)
                appends.append(t1 - t)
                reports.append(res.report)
                progress.update(task, advance=1)
            rows.append({"backend": backend, "window": window, "path": path_label, "cold_ms": cold * 1e3,
                         **stats_ms(samples), "append_ms": statistics.median(appends) * 1e3 if path == "chat" else None,
                         "prompt_tokens": statistics.median(r.prompt_tokens for r in reports),
                         "budget": window - args.max_tokens,
                         "kept_turns": statistics.median(r.kept_turns for r in reports),
                         "summarised_turns": first.report.summarised_turns,
                         "recall_items": statistics.median(r.recall_items for r in reports),
                         "archival_items": statistics.median(r.archival_items for r in reports)})

            # The same builds again with every part timed.
            bd = Breakdown()
            rec, arc, vec, codec = builder.recall, builder.archival, builder.recall.vectors, builder.codec
            bd.wrap(rec, "embed", "query embedding")
            bd.wrap(vec, "search", "vector index/recall")
            bd.wrap(vec, "ranked", "vector index/archival")
            for obj, names in ((rec, ("recent", "count", "_hits", "stored_embedding")), (arc, ("search",)),
                               (builder.core, ("get_all",)), (builder.summaries, ("get",))):
                for n in names:
                    bd.wrap(obj, n, f"db reads/{type(obj).__name__}.{n}")
            bd.wrap(codec, "encode", "tokenizer/encode")
            bd.wrap(codec, "decode", "tokenizer/decode")
            bd.wrap(codec, "render", "chat template")
            total = 0.0
            try:
                for q in questions[:args.calls]:
                    bd.paused = True
                    mid = stored(q)
                    bd.paused = False
                    t = time.perf_counter()
                    build(q, mid)
                    total += time.perf_counter() - t
                    progress.update(task, advance=1)
            finally:
                bd.unwrap()
            n = args.calls
            parts = {k: sum(v for c, v in bd.t.items() if c.split("/")[0] == k) * 1e3 / n
                     for k in BREAKDOWN_COLS[:-1]}
            parts["other"] = total * 1e3 / n - sum(parts.values())
            detail = {c: {"ms": v * 1e3 / n, "calls": bd.calls[c] / n} for c, v in sorted(bd.t.items())}
            breakdowns.append({"backend": backend, "window": window, "path": path_label, "total_ms": total * 1e3 / n,
                               **parts, "encode_calls": bd.calls["tokenizer/encode"] / n,
                               "renders": bd.calls["chat template"] / n,
                               "db_calls": sum(v for c, v in bd.calls.items() if c.startswith("db reads")) / n,
                               "detail": detail})
    return rows, breakdowns


# -- 2. system calls ------------------------------------------------------------------------------------------

def bench_syscalls(url: str, schema: str | None, data_dir: Path, embedder: Any, embed: CachedEmbed,
                   backend: str, args: argparse.Namespace, progress: Any) -> list[dict]:
    from llmasos.system.memory.stores import ArchivalMemory
    from llmasos.system.os import OS
    from llmasos.system.principals import Principal
    from llmasos.system.tools.builtin import _current_time
    from llmasos.system.tools.registry import ToolContext

    rows = []
    with OS(data_dir=data_dir, load_model=False, embedder=embedder, database_url=url,
            database_schema=schema) as osys:
        svc = osys.services
        bulk = ArchivalMemory(osys.db, svc.archival.vectors, embed)  # same tables, cached embeddings
        texts = [t for _, t in make_turns(args.archival_search_items)]
        task = progress.add_task(f"{backend}: {args.archival_search_items} archival items for the syscalls",
                                 total=len(texts))
        for start in range(0, len(texts), args.batch):
            bulk.insert_many(SYS_APP, texts[start:start + args.batch])
            progress.update(task, advance=len(texts[start:start + args.batch]))
        svc.store.kv_set(SYS_APP, "profile", {"name": "Ada", "units": "metric", "tags": list(range(20))})
        principal = Principal.for_app(SYS_APP)
        queries = make_questions(16, seed=5)
        n = args.syscalls
        ctx = ToolContext(SYS_APP, "", None, svc)
        tool = svc.tools.get("current_time", SYS_APP)

        async def tool_run(i: int) -> Any:
            return await tool.run(ctx, {})

        # (label, what the direct call is, syscall args, the direct call (sync or async), calls)
        cases: list[tuple[str, str, Callable[[int], dict], Callable[[int], Any], int]] = [
            ("tools.call current_time", "tool function", lambda i: {"name": "current_time", "arguments": {}},
             lambda i: _current_time(ctx, {}), n),
            ("tools.call current_time", "Tool.run (validate + thread)",
             lambda i: {"name": "current_time", "arguments": {}}, tool_run, n),
            ("storage.kv_get", "Store.kv_get", lambda i: {"key": "profile"},
             lambda i: svc.store.kv_get(SYS_APP, "profile"), n),
            (f"memory.archival_search ({args.archival_search_items:,} items)", "ArchivalMemory.search",
             lambda i: {"query": queries[i % len(queries)], "k": 5},
             lambda i: svc.archival.search(SYS_APP, queries[i % len(queries)], 5), max(n // 5, 10)),
        ]
        task = progress.add_task(f"{backend}: system calls", total=sum(3 * c[4] for c in cases))

        async def alternate(name: str, make_args: Callable[[int], dict], direct: Callable[[int], Any],
                            count: int) -> tuple[list[float], list[float]]:
            """Direct call and system call in turn, on the OS's loop (an app handler's view), so that both
            see the same machine state."""
            d, sc = [], []
            for i in range(count):
                t = time.perf_counter()
                r = direct(i)
                if asyncio.iscoroutine(r):
                    await r
                t1 = time.perf_counter()
                await osys.syscalls.call(principal, name, make_args(i))
                d.append(t1 - t)
                sc.append(time.perf_counter() - t1)
                progress.update(task, advance=2)
            return d, sc

        for label, direct_label, make_args, direct, count in cases:
            name = label.split(" ")[0]
            osys.run(alternate(name, make_args, direct, 2))  # warm-up: vectors loaded, connections pooled
            d, loop = osys.run(alternate(name, make_args, direct, count))
            sync = []
            for i in range(count):
                t = time.perf_counter()
                osys.call(SYS_APP, name, **make_args(i))
                sync.append(time.perf_counter() - t)
                progress.update(task, advance=1)
            aud = []  # the audit row each call writes, alone
            for i in range(50):
                t = time.perf_counter()
                svc.audit.record(principal=str(principal), app=SYS_APP, call=name, args=make_args(i),
                                 decision="allowed", latency_ms=0.1)
                aud.append(time.perf_counter() - t)
            ds, ls, ss, au = stats_ms(d), stats_ms(loop), stats_ms(sync), stats_ms(aud)
            rows.append({"backend": backend, "call": label, "direct": direct_label, "n": count,
                         "direct_median_us": ds["median_ms"] * 1e3, "direct_p95_us": ds["p95_ms"] * 1e3,
                         "loop_median_us": ls["median_ms"] * 1e3, "loop_p95_us": ls["p95_ms"] * 1e3,
                         "sync_median_us": ss["median_ms"] * 1e3, "sync_p95_us": ss["p95_ms"] * 1e3,
                         "overhead_us": (ls["median_ms"] - ds["median_ms"]) * 1e3,
                         "audit_write_us": au["median_ms"] * 1e3})
    return rows


# -- driver ---------------------------------------------------------------------------------------------------

def pg_reachable(url: str) -> str | None:
    import sqlalchemy

    eng = sqlalchemy.create_engine(url)
    try:
        with eng.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=10_000, help="stored turns in the session")
    ap.add_argument("--archival", type=int, default=1000, help="archival items of the context-build app")
    ap.add_argument("--windows", default="2048,8192")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--calls", type=int, default=30, help="context builds per window")
    ap.add_argument("--syscalls", type=int, default=300, help="calls per system-call measurement")
    ap.add_argument("--archival-search-items", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500, help="turns per append_many / insert_many batch")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL URL (a fresh schema is used and dropped)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (the embedder); default: torch's")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.windows = [int(w) for w in args.windows.split(",")]

    import torch
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from llmasos.kernel.llm import load_tokenizer
    from llmasos.models.default_model import default_model
    from llmasos.system.embedder import Embedder
    from llmasos.system.memory.codec import ChatCodec
    from llmasos.system.storage.db import Database

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 200)
    threads = torch.get_num_threads()
    load0 = os.getloadavg()[0]
    console.print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs; torch threads: {threads}; "
                  f"load average {load0:.2f} (anything else running skews these timings)")
    model_path = default_model()
    t = time.perf_counter()
    codec = ChatCodec(load_tokenizer(model_path))
    embedder = Embedder()
    embed = CachedEmbed(embedder)
    console.print(f"tokenizer: {model_path.name} (chat template: {codec.has_template}); embedder: {embedder.id} "
                  f"(dim {embedder.dim}); loaded in {time.perf_counter() - t:.1f}s")

    backends: list[tuple[str, str, str | None]] = []
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="llmasos-bench-system-"))
    own_work = args.work_dir is None
    work.mkdir(parents=True, exist_ok=True)
    backends.append(("sqlite", f"sqlite:///{work / f'bench-{uuid.uuid4().hex[:8]}.db'}", None))
    notes = []
    if args.no_pg:
        notes.append("PostgreSQL: skipped (--no-pg)")
    else:
        why = pg_reachable(args.pg_url)
        if why is None:
            backends.append(("postgresql", args.pg_url, f"bench_{uuid.uuid4().hex[:10]}"))
        else:
            notes.append(f"PostgreSQL: skipped, {args.pg_url} is not reachable ({why})")
    for n in notes:
        console.print(f"[yellow]{n}[/yellow]")

    ctx_rows, bd_rows, sys_rows = [], [], []
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    t_all = time.perf_counter()
    with progress:
        for backend, url, schema in backends:
            db = Database(url, schema)
            try:
                builder = setup_context(db, codec, embed, embedder.dim, args, progress)
                r, b = bench_context(builder, backend, args, progress)
                ctx_rows += r
                bd_rows += b
                sys_rows += bench_syscalls(url, schema, work / f"os-{backend}", embedder, embed, backend, args,
                                           progress)
            finally:
                if schema is not None:
                    db.drop_schema()
                db.close()
    if own_work:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"Context build: {args.turns:,}-turn session, summary, {args.archival:,} archival items, "
                        f"max_tokens {args.max_tokens}, SmolLM2 template ({args.calls} builds each)")
    for col in ("backend", "window", "path", "cold ms", "median ms", "p95 ms", f"p95 < {TARGET_MS:.0f} ms",
                "(append ms)", "prompt tok", "kept turns", "recall", "archival"):
        table.add_column(col, justify="right")
    for r in ctx_rows:
        ok = r["p95_ms"] < TARGET_MS
        table.add_row(r["backend"], str(r["window"]), r["path"], f"{r['cold_ms']:.1f}", f"{r['median_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", "[green]yes[/green]" if ok else "[red]no[/red]",
                      "" if r["append_ms"] is None else f"{r['append_ms']:.1f}",
                      f"{r['prompt_tokens']:.0f}/{r['budget']}", f"{r['kept_turns']:.0f}",
                      f"{r['recall_items']:.0f}", f"{r['archival_items']:.0f}")
    console.print(table)

    table = Table(title="Where a context build's time goes (mean ms per build, exclusive)")
    for col in ("backend", "window", "path", "total", *BREAKDOWN_COLS, "encodes", "renders", "db calls"):
        table.add_column(col, justify="right")
    for r in bd_rows:
        table.add_row(r["backend"], str(r["window"]), r["path"], f"{r['total_ms']:.1f}",
                      *[f"{r[c]:.1f}" for c in BREAKDOWN_COLS], f"{r['encode_calls']:.0f}", f"{r['renders']:.1f}",
                      f"{r['db_calls']:.0f}")
    console.print(table)

    table = Table(title="System-call overhead (µs per call; in loop = awaited on the OS loop, os.call = from a thread)")
    for col in ("backend", "call", "direct", "direct med", "syscall med", "syscall p95", "overhead",
                "os.call med", "os.call p95", "audit row"):
        table.add_column(col, justify="right")
    for r in sys_rows:
        table.add_row(r["backend"], r["call"], r["direct"], f"{r['direct_median_us']:.0f}",
                      f"{r['loop_median_us']:.0f}", f"{r['loop_p95_us']:.0f}", f"{r['overhead_us']:.0f}",
                      f"{r['sync_median_us']:.0f}", f"{r['sync_p95_us']:.0f}", f"{r['audit_write_us']:.0f}")
    console.print(table)
    load1 = os.getloadavg()[0]
    console.print(f"total {time.perf_counter() - t_all:.0f}s; load average {load0:.2f} before, {load1:.2f} after")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": notes,
            "loadavg_before": load0, "loadavg_after": load1,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "context_build": ctx_rows, "context_breakdown": bd_rows, "syscalls": sys_rows}, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

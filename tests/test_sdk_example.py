"""The complete example app of docs/sdk.md, run exactly as printed there: discovered from an apps folder, every
handler exercised on a real OS (built-in model, real embedder, SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import example_source

from llmasos.system.errors import NotFound


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_documented_example_app_runs(make_os, tmp_path: Path):
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "notes.py").write_text(example_source())
    os_ = make_os(apps=["assistant"], apps_dir=folder)
    assert "notes" in [m.name for m in os_.apps()]

    added = os_.run(os_.handle("notes", "add", title="milk", text="Buy oat milk and eggs on Friday."))
    assert added["title"] == "milk" and '"words": 7' in added["words"]
    os_.run(os_.handle("notes", "add", title="rust", text="Read the chapter on ownership and borrowing."))
    assert os_.run(os_.handle("notes", "find", query="groceries to buy", k=1)) == ["milk"]
    tidy = os_.run(os_.handle("notes", "tidy", title="milk"))
    assert tidy["text"] and os_.ps(app="notes")  # the LLM call ran as a process of the app
    tags = os_.run(os_.handle("notes", "tags", title="rust"))
    assert isinstance(tags["tags"], list) and len(tags["tags"]) <= 3
    reply = os_.chat("notes", "s1", "What do I need to buy?")
    assert isinstance(reply, str)
    assert [m["role"] for m in os_.call("notes", "memory.history", session="s1")] == ["user", "assistant"]
    # Its tool is its own.
    with pytest.raises(NotFound):
        os_.call("assistant", "tools.call", name="word_count", arguments={"text": "a b"})
    calls = {e["call"] for e in os_.call("notes", "audit.query", limit=100)}
    assert {"storage.doc_put", "memory.archive", "tools.call", "llm.chat", "memory.archival_search"} <= calls

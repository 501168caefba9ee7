"""The writer app: the library API, the app in a real OS (handlers, HTTP routes), an evaluation smoke run."""

from __future__ import annotations

import pytest

from llmasos.apps.writer import Writer, WriterApp
from llmasos.apps.writer.core import minimal_edits
from llmasos.apps.writer.spelling import apply_edits


@pytest.fixture(scope="module")
def writer(standalone):
    """The library on a private OS that shares the session's built-in model (one engine, one warm-up)."""
    return Writer(runtime=standalone(WriterApp()))


def test_correct_returns_minimal_edits_with_offsets(writer):
    text = "Teh quick brown fox jumsp over the lazy dog becuase it was hungyr."
    c = writer.correct(text)
    assert c.text == "The quick brown fox jumps over the lazy dog because it was hungry."
    assert [e.original for e in c.edits] == ["Teh", "jumsp", "becuase", "hungyr"]
    for e in c.edits:
        assert text[e.start:e.end] == e.original
    assert apply_edits(text, c.edits) == c.text


def test_correct_protects_names_numbers_urls_code(writer):
    for clean in ["Send the report to Jane Smith at jane.smith@example.com before Friday.",
                  "Download it from https://www.python.org/downloads/ and run it.",
                  "Set max_retries to 5 and call os.path.join on the parts.",
                  "The function `parse_args` returns a namespace with the options.",
                  "We visited Reykjavik and Tromso in 2024."]:
        assert writer.correct(clean).edits == [], clean
    writer.user_words.add("llmasos")
    assert writer.correct("Install llmasos with pip.").edits == []
    assert writer.correct("The word recieve is misspelled.").text == "The word receive is misspelled."


def test_minimal_edit_constraint_rejects_rewrites():
    orig = "She go to the market every day."
    edits = minimal_edits(orig, "She goes to the market every day.", [])
    assert [(e.original, e.replacement) for e in edits] == [("go", "goes")]
    assert minimal_edits(orig, "Every morning, my sister buys fresh vegetables downtown.", []) == []
    assert minimal_edits("我今天很高心。", "我今天很高兴。", [], chinese=True)[0].replacement == "兴"
    assert minimal_edits("我今天很高心。", "今天我非常开心啊。", [], chinese=True) == []


def test_llm_functions_with_exact_signatures(writer):
    text = "The city council approved a new park near the river. Work starts in spring."
    titles = writer.titles(text, n=4)
    assert len(titles) == 4 and len({t.lower() for t in titles}) == 4
    assert all(0 < len(t.split()) <= 12 for t in titles)
    cont = writer.continue_text(text, max_tokens=8)
    assert isinstance(cont, str)
    polished = writer.polish("hey, the meeting is moved to monday ok?", style="formal")
    assert isinstance(polished, str) and polished
    writer.llm_grammar = True
    try:
        c = writer.correct("Teh council approve a new park.")
        assert c.edits[0].original == "Teh"
        assert apply_edits("Teh council approve a new park.", c.edits) == c.text
    finally:
        writer.llm_grammar = False


def test_app_in_os_handlers_and_routes(tmp_path, embedder, builtin_llm):
    import httpx

    from llmasos.sdk.discovery import bundled
    from llmasos.server import start_server
    from llmasos.system.os import OS

    assert isinstance(bundled("writer"), WriterApp)
    os_ = OS(data_dir=tmp_path, embedder=embedder, llm=builtin_llm, apps=["writer"])
    try:
        out = os_.run(os_.handle("writer", "correct", text="I realy like it."))
        assert out["text"] == "I really like it." and out["edits"][0]["start"] == 2
        os_.run(os_.handle("writer", "add_words", words=["realy"]))
        assert os_.run(os_.handle("writer", "correct", text="I realy like it."))["edits"] == []
        titles = os_.run(os_.handle("writer", "titles", text="Gardening in small flats.", n=3))["titles"]
        assert len(titles) == 3
        reply = os_.chat("writer", "s1", "Teh sentense has typos.")
        assert "The sentence has typos." in reply
        h = start_server(os_)
        try:
            r = httpx.post(h.url + "/v1/apps/writer/handlers/correct", json={"text": "Helo world."},
                           timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            body = body.get("result", body)
            assert body["text"] == "Hello world."
            r = httpx.post(h.url + "/v1/apps/writer/handlers/continue_text",
                           json={"text": "Once upon a time", "max_tokens": 5}, timeout=60)
            assert r.status_code == 200, r.text
        finally:
            h.stop()
    finally:
        os_.shutdown()


def test_continue_stream_is_an_async_generator(writer):
    rt = writer._runtime

    async def collect():
        return [p async for p in WriterApp().continue_stream(rt.ctx, "The sea was calm", 6)]

    pieces = rt.run(collect())
    assert isinstance(pieces, list)


def test_evaluation_smoke(writer):
    from llmasos.apps.writer.evaluation import evaluate

    r = evaluate(limit=80, writer=writer)
    assert r["unchanged"]["recall"] == 0.0
    assert r["spelling"]["bleu"] > r["unchanged"]["bleu"]
    assert r["spelling"]["precision"] > 0.8 and r["spelling"]["recall"] > 0.4
    assert r["spelling"]["damage"]["sentences"] < 0.2

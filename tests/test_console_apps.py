"""The bundled apps' console pages, driven by headless Chromium (Debian's `chromium`, through Playwright)
against a live server running all four apps on the built-in model: the support chat with its slots, tickets and
handoff; the knowledge base with upload and cited answers; recommendations with their explanations; the writer's
edits as a diff. Each page is checked against what the app's own API returns. Screenshots go to
$LLMASOS_SCREENSHOTS (default tests/.screenshots/)."""

from __future__ import annotations

import re

import httpx
import pytest
from support import make_pdf, open_page, shot


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder, builtin_llm):
    from llmasos.sdk.discovery import bundled_names
    from llmasos.server import start_server
    from llmasos.system.os import OS

    os_ = OS(data_dir=tmp_path_factory.mktemp("console-apps"), embedder=embedder, llm=builtin_llm,
             apps=bundled_names())
    handle = start_server(os_)
    try:
        yield handle
    finally:
        handle.stop()
        os_.shutdown()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def handler(api: httpx.Client, app: str, name: str, **args):
    r = api.post(f"/v1/apps/{app}/handlers/{name}", json=args)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def test_sidebar_lists_the_installed_apps_pages(page, server):
    open_page(page, server.url, "chat")
    for view in ("support", "knowledge", "recommend", "writer"):
        page.get_by_test_id(f"nav-{view}").wait_for()


def test_handler_stream_route(api):
    """`/handlers/{name}/stream`: a streamed handler's text pieces, a plain handler's one result, the record."""
    import json

    def events(path: str, body: dict) -> list:
        with api.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [json.loads(x) for x in lines[:-1]]

    out = events("/v1/apps/writer/handlers/continue_stream/stream", {"text": "The harbour was quiet", "max_tokens": 12})
    pieces = [e["delta"] for e in out if "delta" in e]
    assert pieces and out[-1]["done"] is True and out[-1]["pid"] > 0
    assert out[-1]["processes"] and out[-1]["processes"][0]["kind"] == "llm"
    out = events("/v1/apps/writer/handlers/styles/stream", {})
    assert "formal" in out[0]["data"]["styles"]
    # A streamed handler called whole joins its text (sampled: not the same text as the streamed one).
    whole = handler(api, "writer", "continue_stream", text="The harbour was quiet", max_tokens=12)
    assert isinstance(whole, str) and whole.strip()
    # The name and the arguments are checked before anything runs.
    assert api.post("/v1/apps/writer/handlers/nope/stream", json={}).status_code == 404
    r = api.post("/v1/apps/writer/handlers/continue_stream/stream", json={"txt": "x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_support_page_fills_slots_and_hands_off(page, server, api):
    open_page(page, server.url, "support")
    page.get_by_test_id("support-example").first.wait_for()  # the domain's examples, before the first message

    def say(text: str, n: int) -> str:
        page.get_by_test_id("support-input").fill(text)
        page.get_by_test_id("support-send").click()
        reply = page.locator("[data-testid=support-msg][data-role=assistant]").nth(n)
        reply.wait_for()
        return reply.inner_text()

    assert "order" in say("I want to cancel my order", 0).lower()
    form = page.get_by_test_id("form")
    form.wait_for()
    assert form.get_attribute("data-form") == "cancel_order" and form.get_attribute("data-open") == "yes"
    page.locator("[data-slot=order_id][data-filled=no].cs-asked").wait_for()  # asked, not filled yet
    page.locator("[data-slot=reason][data-filled=no]").wait_for()

    say("it's order 51007", 1)
    page.locator("[data-slot=order_id][data-filled=yes]").wait_for()
    assert page.locator("[data-slot=order_id] [data-testid=slot-value]").inner_text() == "51007"
    page.locator("[data-slot=reason][data-filled=no].cs-asked").wait_for()

    # The page shows what the app stored.
    sid = page.evaluate("localStorage.getItem('llmasos.support.session')")
    state = handler(api, "customer_service", "state", session_id=sid)
    assert state["form"] == "cancel_order" and state["slots"] == {"order_id": "51007"}
    assert state["requested"] == "reason"

    say("I found it cheaper", 2)
    page.locator("[data-testid=form][data-open=no]").wait_for()  # the form ran its action
    assert handler(api, "customer_service", "lookup_order", order_id="51007")["status"] == "cancelled"

    say("I want to talk to a human agent", 3)
    banner = page.get_by_test_id("handoff")
    banner.wait_for()
    tickets = handler(api, "customer_service", "tickets")
    ticket = next(t for t in tickets if t["session"] == sid and t["kind"] == "handoff")
    assert ticket["id"] in banner.inner_text()
    row = page.locator(f"[data-testid=ticket][data-ticket={ticket['id']}]")
    row.wait_for()
    assert row.get_by_test_id("ticket-summary").inner_text().strip() == ticket["summary"].strip()
    shot(page, "app-support")

    # A reload continues the stored conversation.
    page.reload()
    page.locator("[data-testid=support-msg]").nth(7).wait_for()
    assert page.locator("[data-testid=support-msg]").count() == 8


def test_knowledge_page_uploads_and_answers_with_citations(page, server, api, tmp_path):
    md = tmp_path / "tides.md"
    md.write_text("# Tides\n\nTides are the rise and fall of sea levels caused by the gravity of the Moon and the Sun. "
                  "Most coasts see two high tides and two low tides every lunar day.\n")
    html_file = tmp_path / "volcano.html"
    html_file.write_text("<html><head><title>Volcanoes</title></head><body><p>A volcano is a rupture in the crust "
                         "of a planet that lets hot lava, ash and gases escape from a magma chamber below the "
                         "surface.</p></body></html>")
    pdf = tmp_path / "zebra.pdf"
    pdf.write_bytes(make_pdf("Zebras are African equines with distinctive black and white striped coats."))

    open_page(page, server.url, "knowledge")
    page.get_by_test_id("kb-file").set_input_files([str(md), str(html_file), str(pdf)])
    for doc in ("tides", "volcano", "zebra"):
        page.locator(f"[data-testid=kb-doc][data-doc={doc}]").wait_for()
    listed = {d["id"] for d in handler(api, "knowledge_qa", "documents")}
    assert listed == {"tides", "volcano", "zebra"}

    page.get_by_test_id("kb-question").fill("What causes the tides?")
    page.get_by_test_id("kb-ask").click()
    answer = page.locator("[data-testid=kb-answer][data-done=yes]")
    answer.wait_for()
    assert answer.get_attribute("data-refused") == "no"
    page.locator("[data-testid=kb-passage][data-doc=tides][data-cited=yes]").wait_for()
    # The answer is about the tides passage: generated and grounded in it, or quoted from it when the model's
    # text was not grounded (the built-in model's usually is not).
    text = page.get_by_test_id("kb-answer-text").inner_text().lower()
    assert any(w in text for w in ("tide", "moon", "gravity", "sea level")), text
    if page.get_by_test_id("kb-extractive").count():
        assert page.locator("[data-testid=kb-answer-text] .kb-cite").first.inner_text() == "tides"
    ranked = handler(api, "knowledge_qa", "search", query="What causes the tides?", k=3)
    assert ranked[0]["doc_id"] == "tides"
    assert page.get_by_test_id("kb-passage").first.get_attribute("data-doc") == "tides"
    shot(page, "app-knowledge")

    page.get_by_test_id("kb-question").fill("Who won the 1998 football world cup final?")
    page.get_by_test_id("kb-ask").click()
    page.locator("[data-testid=kb-answer][data-done=yes][data-refused=yes]").wait_for()
    assert "can't answer that from the knowledge base" in page.get_by_test_id("kb-refused").inner_text()
    assert handler(api, "knowledge_qa", "answer", question="Who won the 1998 football world cup final?")["refused"]

    page.locator("[data-testid=kb-doc][data-doc=volcano] [data-testid=kb-delete]").click()
    page.locator("[data-testid=kb-doc][data-doc=volcano]").wait_for(state="detached")
    assert {d["id"] for d in handler(api, "knowledge_qa", "documents")} == {"tides", "zebra"}


def test_recommend_page_ranks_filters_and_explains(page, server, api):
    open_page(page, server.url, "recommend")
    if not handler(api, "recommender", "catalogue")["fitted"]:  # (fitted already if `llmasos run` ran first)
        page.get_by_test_id("rec-demo").click()  # no catalogue yet: the page offers the demo shop
    results = page.get_by_test_id("rec-results")
    results.wait_for(timeout=300_000)  # fitting learns the blend weights, then five LLM explanations
    user = page.get_by_test_id("rec-user").input_value()
    cards = page.get_by_test_id("rec-item")
    shown = [cards.nth(i).get_attribute("data-item") for i in range(cards.count())]
    assert shown == handler(api, "recommender", "recommend", user_id=user, k=5)["items"]
    for i in range(cards.count()):
        # Each explanation is about its item (a sentence that names none of the facts is replaced by them).
        why = cards.nth(i).get_by_test_id("rec-explanation").inner_text()
        name = cards.nth(i).locator(".strong").first.inner_text()
        facts = set(re.findall(r"[a-z]{4,}", (name + " " + cards.nth(i).get_by_test_id("rec-why").inner_text()
                                               .replace(why, "")).lower()))
        assert set(re.findall(r"[a-z]{4,}", why.lower())) & facts, why
    page.get_by_test_id("rec-profile").wait_for()
    shot(page, "app-recommend")

    # A category filter: every item shown is in it, and it is what the API returns for the same request.
    category = handler(api, "recommender", "catalogue")["categories"][0]
    page.get_by_test_id("rec-category").select_option(category)
    page.locator("label.toggle", has=page.get_by_test_id("rec-explain")).click()  # explanations off
    assert not page.get_by_test_id("rec-explain").is_checked()
    page.get_by_test_id("rec-go").click()
    want = handler(api, "recommender", "recommend", user_id=user, k=5, filters={"category": category})
    page.wait_for_function("ids => [...document.querySelectorAll('[data-testid=rec-item]')].map(e => e.dataset.item)"
                           ".join() === ids.join()", arg=want["items"])
    assert all(d["category"] == category for d in want["details"])

    # Preferences from words join the profile.
    page.get_by_test_id("rec-wish").fill(f"something cheap in {category} under 50")
    page.get_by_test_id("rec-wish-go").click()
    page.wait_for_function("() => /price_max/.test(document.querySelector('[data-testid=rec-prefs]').innerText)")
    assert handler(api, "recommender", "profile", user_id=user)["preferences"]["price_max"] == 50


def test_writer_page_shows_edits_as_a_diff(page, server, api):
    text = "We recieved you're mesage and will adress it tomorow. Thank you for your patience."
    open_page(page, server.url, "writer")
    page.get_by_test_id("wr-text").fill(text)
    page.get_by_test_id("wr-mode-correct").click()
    page.get_by_test_id("wr-go").click()
    page.get_by_test_id("wr-diff").wait_for()
    want = handler(api, "writer", "correct", text=text)
    edits = page.get_by_test_id("wr-edit")
    assert edits.count() == len(want["edits"]) >= 3
    for i, e in enumerate(want["edits"]):
        assert edits.nth(i).locator("del").inner_text() == e["original"]
        assert edits.nth(i).locator("ins").inner_text() == e["replacement"]
    shot(page, "app-writer")

    # Refuse the first edit, apply the rest: the draft is the original with only the kept edits.
    page.get_by_test_id("wr-keep").first.uncheck()
    page.get_by_test_id("wr-apply").click()
    kept = want["edits"][1:]
    expected, pos = "", 0
    for e in kept:
        expected += text[pos:e["start"]] + e["replacement"]
        pos = e["end"]
    expected += text[pos:]
    assert page.get_by_test_id("wr-text").input_value() == expected
    assert want["edits"][0]["original"] in expected

    # A word added to the dictionary is never corrected again.
    page.get_by_test_id("wr-text").fill(text)
    page.get_by_test_id("wr-go").click()
    page.get_by_test_id("wr-learn").first.wait_for()
    first = want["edits"][0]["original"]
    page.get_by_test_id("wr-learn").first.click()
    page.wait_for_function("n => document.querySelectorAll('[data-testid=wr-edit]').length === n",
                           arg=len(want["edits"]) - 1)
    assert all(e["original"] != first for e in handler(api, "writer", "correct", text=text)["edits"])

    # The continuation streams in after the text: seen partly written, then whole.
    page.get_by_test_id("wr-mode-continue").click()
    page.get_by_test_id("wr-max-tokens").fill("24")
    page.evaluate("""() => {
        window.__parts = [];
        new MutationObserver(() => {
            const c = document.querySelector('[data-testid=wr-continuation] .wr-ins');
            if (c) window.__parts.push(c.innerText);
        }).observe(document.querySelector('[data-testid=wr-result]'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_test_id("wr-go").click()
    page.locator("[data-testid=wr-result][data-mode=continue] [data-testid=wr-apply]").wait_for()
    final = page.locator("[data-testid=wr-continuation] .wr-ins").inner_text()
    parts = page.evaluate("window.__parts")
    assert final.strip() and any(p and p != final for p in parts), parts

    # Titles and polishing show the model's output (polishing as a word diff against the draft).
    page.get_by_test_id("wr-mode-titles").click()
    page.get_by_test_id("wr-go").click()
    page.get_by_test_id("wr-titles").wait_for()
    assert page.locator("[data-testid=wr-titles] li").count() >= 1
    page.get_by_test_id("wr-mode-polish").click()
    page.get_by_test_id("wr-style").select_option("formal")
    page.get_by_test_id("wr-go").click()
    page.locator("[data-testid=wr-result][data-mode=polish] [data-testid=wr-diff]").wait_for()


def test_llmasos_run_each_app_through_the_server(server, api):
    """`llmasos run <app> "input"` against the running server, for each bundled app."""
    import json

    from typer.testing import CliRunner

    from llmasos.cli import app

    runner = CliRunner()

    def run(*args: str) -> dict:
        r = runner.invoke(app, ["run", *args, "--json"], env={"LLMASOS_URL": server.url})
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    out = run("customer_service", "where is my order 48213?")
    assert "48213" in out["reply"] and "shipped" in out["reply"] and out["pid"]
    out = run("writer", "Teh quick brwn fox")
    assert out["reply"].startswith("The quick brown fox")
    handler(api, "knowledge_qa", "add", documents=[{"id": "lighthouse", "text": "The Eddystone lighthouse stands on "
                                                    "rocks fourteen kilometres south of Plymouth in England."}])
    out = run("knowledge_qa", "Where does the Eddystone lighthouse stand?")
    assert out["reply"].endswith("Sources: [lighthouse]"), out["reply"]
    handler(api, "knowledge_qa", "delete", doc_id="lighthouse")
    out = run("recommender", "cheap books about science fiction")
    assert out["reply"].startswith("Here is what I would pick") and out["reply"].count("\n") == 5

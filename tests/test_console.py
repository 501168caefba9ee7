"""The web console at `/`, driven by headless Chromium (Debian's `chromium` package, through Playwright) against a
live server on the built-in model: chat streaming, kill from the process table, the system charts, the audit
filters and the token-probability view. Each test leaves a screenshot in $LLMASOS_SCREENSHOTS (default
tests/.screenshots/)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from support import open_page, shot


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from llmasos.server import start_server
    from llmasos.system.os import OS

    os_ = OS(data_dir=tmp_path_factory.mktemp("console"), model={"name": "builtin", "dtype": "float32"})
    handle = start_server(os_)
    try:
        yield os_, handle
    finally:
        handle.stop()
        os_.shutdown()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server[1].url, timeout=120) as client:
        yield client


def open_view(pg, server, view: str) -> None:
    open_page(pg, server[1].url, view)


def model_id(api: httpx.Client) -> str:
    return api.get("/v1/models").json()["data"][0]["id"]


def test_index_and_assets_are_served_locally(server, api):
    html = api.get("/").text
    assert "static/js/main.js" in html and "importmap" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    for path in ("static/vendor/preact.mjs", "static/vendor/uPlot.iife.min.js", "static/css/console.css",
                 "static/js/chat.js"):
        assert api.get(f"/{path}").status_code == 200, path


def test_chat_streams_a_reply_with_its_process_record(page, server, api):
    open_view(page, server, "chat")
    page.wait_for_selector("[data-testid=chat-target] option[value='app:assistant']", state="attached")
    # Record the reply's text as it changes: a streamed reply is seen partly written, then whole.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const m = [...document.querySelectorAll('.msg-assistant')].pop();
            if (m) window.__seen.push([m.dataset.streaming, m.querySelector('[data-testid=assistant-text]').innerText]);
        }).observe(document.querySelector('[data-testid=messages]'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.get_by_test_id("composer").fill("Hello! Who are you?")
    page.get_by_test_id("send").click()
    reply = page.locator(".msg-assistant").last
    record = reply.get_by_test_id("process-record")
    record.wait_for()
    text = reply.get_by_test_id("assistant-text").inner_text().strip()
    assert text
    seen = page.evaluate("window.__seen")
    partial = {t.strip() for streaming, t in seen if streaming == "true" and t.strip() and t.strip() != "thinking…"}
    assert partial, "no text was shown while the reply streamed"
    assert reply.get_attribute("data-streaming") == "false"

    # The record names the LLM process the reply ran; the API agrees on its tokens.
    pid = int(record.locator("[data-pid]").first.get_attribute("data-pid"))
    proc = api.get(f"/v1/processes/{pid}").json()
    assert proc["kind"] == "llm" and proc["state"] == "finished" and proc["app"] == "assistant"
    assert f"{proc['tokens_in']} → {proc['tokens_out']} tok" in record.inner_text()
    assert "TTFT" in record.inner_text() and "tok/s" in record.inner_text()
    record.get_by_test_id("record-toggle").click()
    report = record.get_by_test_id("memory-report")
    report.wait_for()
    assert "token budget" in report.inner_text() and str(proc["memory"]["budget"]) in report.inner_text()

    # The conversation is a session of the app, listed in the sidebar and stored by the OS.
    session = proc["session"]
    page.locator(f"[data-session='{session}']").wait_for()
    history = api.get(f"/v1/apps/assistant/sessions/{session}").json()["data"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "Hello! Who are you?" and history[1]["content"].strip()
    shot(page, "chat")


def test_kill_from_the_process_table(page, server, api):
    os_, _ = server
    open_view(page, server, "processes")
    body: dict = {"model": model_id(api), "messages": [{"role": "user", "content": "Count to a thousand."}],
                  "max_tokens": 1000, "ignore_eos": True}
    done: dict = {}

    def generate() -> None:
        try:
            done["response"] = httpx.post(f"{server[1].url}/v1/chat/completions", json=body, timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported below
            done["error"] = exc

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    pid = None
    deadline = time.monotonic() + 60
    while pid is None and time.monotonic() < deadline:
        live = [p for p in api.get("/v1/processes", params={"app": "api"}).json()["data"]
                if p["kind"] == "llm" and p["state"] in ("waiting", "running")]
        pid = live[-1]["pid"] if live else None
        time.sleep(0.05)
    assert pid is not None, f"the generation never started: {done}"

    row = page.locator(f"tr[data-pid='{pid}']")
    row.get_by_test_id("kill").click()
    page.wait_for_selector(f"tr[data-pid='{pid}'][data-state=killed]")
    assert "killed" in row.get_by_test_id("proc-state-cell").inner_text()
    assert row.get_by_test_id("kill").count() == 0  # a dead process has no kill button
    assert api.get(f"/v1/processes/{pid}").json()["state"] == "killed"
    shot(page, "processes-killed")

    worker.join(60)
    assert not worker.is_alive(), "the killed request never returned"
    assert "error" not in done, done
    # The kernel gave every KV block back once nothing is live.
    deadline = time.monotonic() + 30
    while os_.llm.num_live() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os_.llm.num_live() == 0
    bm = os_.llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_system_charts_render_with_data(page, server, api):
    open_view(page, server, "system")
    page.get_by_test_id("stat-model").wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=chart-kv] .chart').dataset.points >= 2")
    # Some traffic while the console samples: the throughput chart must show it.
    api.post("/v1/chat/completions", json={"model": model_id(api), "messages": [{"role": "user", "content": "Hi"}],
                                           "max_tokens": 24, "ignore_eos": True})
    page.wait_for_function("""() => {
        const u = document.querySelector('[data-testid=chart-throughput] .chart').uplot;
        return u && u.data[0].length >= 4 && u.data[1].some((v) => v > 0);
    }""")
    for chart in ("kv", "throughput", "latency", "queue", "share"):
        card = page.get_by_test_id(f"chart-{chart}")
        canvas = card.locator("canvas").first
        box = canvas.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, (chart, box)
        assert int(card.locator(".chart").get_attribute("data-points")) >= 4
    # The share chart has a band for the app that generated.
    assert page.evaluate("document.querySelector('[data-testid=chart-share] .chart').uplot.series.length") >= 2
    page.set_viewport_size({"width": 1440, "height": 1300})  # the whole view in the screenshot
    page.wait_for_function("() => document.querySelector('[data-testid=chart-share] canvas').clientHeight > 100")
    shot(page, "system")


def test_audit_filters(page, server, api):
    # A failed call (renicing a process that has ended) and a denied one (a key that does not exist).
    api.post("/v1/chat/completions", json={"model": model_id(api), "messages": [{"role": "user", "content": "Hi"}],
                                           "max_tokens": 4})
    ended = next(p for p in api.get("/v1/processes", params={"state": "finished"}).json()["data"])
    assert api.patch(f"/v1/processes/{ended['pid']}", json={"priority": 5}).status_code == 400
    assert api.post("/v1/syscalls/storage.kv_get", json={"args": {"key": "missing"}}).status_code == 404

    open_view(page, server, "audit")
    page.get_by_test_id("audit-table").wait_for()
    rows = "[data-testid=audit-table] tbody tr[data-decision]"
    all_decisions = set(page.eval_on_selector_all(rows, "rs => rs.map(r => r.dataset.decision)"))
    assert {"allowed", "denied", "failed"} <= all_decisions

    def only(attr: str, value: str, expected: int) -> None:
        page.wait_for_function(
            """([sel, attr, value, n]) => {
                const rs = [...document.querySelectorAll(sel)];
                return rs.length === n && rs.every((r) => r.dataset[attr] === value);
            }""", arg=[rows, attr, value, expected])

    page.get_by_test_id("audit-decision").select_option("denied")
    denied = api.get("/v1/audit", params={"decision": "denied", "limit": 200}).json()["data"]
    only("decision", "denied", len(denied))
    assert any(r["call"] == "storage.kv_get" for r in denied)
    shot(page, "audit-denied")

    page.get_by_test_id("audit-decision").select_option("")
    page.get_by_test_id("audit-call").fill("process.renice")
    page.get_by_test_id("audit-call").press("Enter")
    renices = api.get("/v1/audit", params={"call": "process.renice", "limit": 200}).json()["data"]
    only("call", "process.renice", len(renices))
    assert any(r["decision"] == "failed" for r in renices)
    page.locator(rows).first.click()  # the row opens on its details
    page.locator(".detail-row").wait_for()
    shot(page, "audit-call")


def test_model_chat_shows_token_probabilities(page, server):
    open_view(page, server, "chat")
    page.wait_for_selector("[data-testid=chat-target] option[value=model]", state="attached")
    page.get_by_test_id("chat-target").select_option("model")
    toggle = page.get_by_test_id("probs-toggle")
    if not toggle.is_checked():
        toggle.check(force=True)
    page.get_by_test_id("composer").fill("Tell me a short story about a cat.")
    page.get_by_test_id("send").click()
    page.get_by_test_id("model-stats").wait_for()
    tokens = page.locator("[data-testid=token-view] .tok")
    assert tokens.count() >= 1
    # Colour follows probability: every token carries its hue.
    hues = tokens.evaluate_all("ts => ts.map(t => t.style.getPropertyValue('--h'))")
    assert all(h.strip().isdigit() and 0 <= int(h) <= 120 for h in hues), hues
    widths = tokens.evaluate_all("ts => ts.map(t => t.getBoundingClientRect().width)")
    token = tokens.nth(widths.index(max(widths)))
    token.hover()
    pop = page.get_by_test_id("lp-pop")
    pop.wait_for()
    assert pop.get_by_test_id("lp-alt").count() >= 2
    assert "%" in pop.inner_text()
    # A click pins the alternatives; they stay when the mouse leaves.
    token.click()
    page.mouse.move(5, 5)
    page.wait_for_selector("[data-testid=lp-pop].pinned")
    shot(page, "logprobs")


def test_keyed_mode_asks_for_a_key_and_sends_it(page, server):
    """Once keys exist the console asks for one, keeps it in localStorage and sends it as a bearer token; an app's
    key cannot open the system view. The keys are revoked afterwards: the server is back in local mode."""
    from llmasos.system.principals import ADMIN, Principal

    os_, handle = server
    keys, auth = os_.services.keys, handle.app.state.llmasos.auth
    admin_id, admin_key = keys.create(ADMIN)
    app_id, app_key = keys.create(Principal.for_app("assistant"))
    auth.forget()
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    try:
        open_view(page, server, "apps")
        dialog = page.get_by_test_id("key-dialog")
        dialog.wait_for()
        assert "API key" in dialog.inner_text()
        shot(page, "key-dialog")
        page.get_by_test_id("key-input").fill(admin_key)
        dialog.locator("button[type=submit]").click()
        page.locator("[data-testid=app-card][data-app=assistant]").wait_for()
        assert page.evaluate("localStorage.getItem('llmasos.key')") == admin_key
        assert f"Bearer {admin_key}" in sent
        assert admin_key[-4:] in page.get_by_test_id("key-button").inner_text()

        # An app's key sees its own app, and no system view.
        page.get_by_test_id("key-button").click()
        page.get_by_test_id("key-input").fill(app_key)
        page.get_by_test_id("key-dialog").locator("button[type=submit]").click()
        page.get_by_test_id("nav-system").click()
        page.get_by_text("The system view needs an admin key").wait_for()
        page.get_by_test_id("nav-apps").click()
        page.locator("[data-testid=app-card][data-app=assistant]").wait_for()
        assert page.locator("[data-testid=app-card]").count() == 1
    finally:
        keys.revoke(admin_id)
        keys.revoke(app_id)
        auth.forget()


def test_a_bundled_apps_page_says_when_the_app_is_not_there(page, server):
    """This server runs only the assistant: no bundled-app pages in the sidebar, and their address explains."""
    page.goto(f"{server[1].url}/#/support")
    page.get_by_text("customer_service is not available").wait_for()
    page.get_by_test_id("nav-chat").wait_for()
    assert page.locator("[data-testid=nav-support], [data-testid=nav-writer]").count() == 0

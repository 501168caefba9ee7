"""The recommender app: the library core (exact signatures), the app in a real OS, its routes through a real
server, and a quick evaluation run."""

from __future__ import annotations

import httpx
import pytest

from llmasos.apps.recommender import SOURCES, Recommender, RecommenderApp
from llmasos.apps.recommender.synthetic import make_dataset, time_split

SMALL = {"n_users": 120, "n_items": 150, "seed": 3}


@pytest.fixture(scope="module")
def runtime(standalone):
    return standalone(RecommenderApp())


@pytest.fixture(scope="module")
def data():
    return make_dataset(**SMALL)


@pytest.fixture(scope="module")
def rec(data, runtime):
    interactions, items = data
    return Recommender.fit(interactions=interactions, items=items, runtime=runtime)


def test_fit_and_recommend(rec, data):
    interactions, items = data
    owned: dict[str, set[str]] = {}
    for x in interactions:
        owned.setdefault(x["user"], set()).add(x["item"])
    assert rec.embeddings is not None and rec.embeddings.shape[0] == len(items)
    assert set(rec.weights) == set(SOURCES) and rec.validation["tuned"]
    for user in ["u0000", "u0001", "u0050"]:
        out = rec.recommend(user, k=10)
        assert len(out) == 10 == len(set(out))
        assert not set(out) & owned[user]
        assert all(i in rec.item_index for i in out)
    by_id = {it["id"]: it for it in items}
    out = rec.recommend("u0000", k=10, filters={"category": "phone", "price_max": 300})
    assert out and all(by_id[i]["category"] == "phone" and by_id[i]["price"] <= 300 for i in out)
    assert not set(out) & owned["u0000"]
    # keywords are a content query: the matching items come first
    out = rec.recommend("u0000", k=5, filters={"category": "headphones", "keywords": ["running", "wireless"]})
    assert sum("running" in by_id[i]["description"] or "wireless" in by_id[i]["description"] for i in out) >= 3
    # a user never seen: popularity (cold start), and explicit preferences act as filters
    cold = rec.recommend("nobody", k=10)
    assert len(cold) == 10
    rec.set_preferences("nobody2", {"category": "book", "price_max": 30})
    assert all(by_id[i]["category"] == "book" and by_id[i]["price"] <= 30 for i in rec.recommend("nobody2", k=5))
    assert rec.profile("u0000")["interactions"] == len(owned["u0000"])


def test_preferences_from_chat_and_explanations(rec, data):
    _, items = data
    by_id = {it["id"]: it for it in items}
    prefs = rec.preferences_from_text("shopper", "cheap wireless headphones for running under $80")
    assert prefs["category"] == "headphones" and prefs["price_max"] == 80
    assert "wireless" in prefs["keywords"] and "running" in prefs["keywords"]
    assert prefs["llm"] is None or set(prefs["llm"]) == {"category", "price_max", "keywords"}
    out = rec.recommend("shopper", k=5)
    assert out and all(by_id[i]["category"] == "headphones" and by_id[i]["price"] <= 80 for i in out)
    cheap = rec.preferences_from_text("shopper2", "something cheap to read, a science fiction book")
    assert cheap["category"] == "book" and cheap["price_max"] is not None
    expl = rec.explain("u0000", rec.recommend("u0000", k=2))
    assert len(expl) == 2
    for e in expl:
        assert e["explanation"].strip() and e["template"].startswith(e["name"])
        assert set(e["sources"]) <= set(SOURCES) | {"query"}


def test_app_in_os_handlers_and_routes(tmp_path, embedder, builtin_llm):
    from llmasos.sdk.discovery import bundled
    from llmasos.server import start_server
    from llmasos.system.os import OS

    assert isinstance(bundled("recommender"), RecommenderApp)
    interactions, items = make_dataset(**SMALL)
    train, _ = time_split(interactions)
    with OS(data_dir=tmp_path, embedder=embedder, llm=builtin_llm, apps=["recommender"]) as os_:
        fitted = os_.run(os_.handle("recommender", "fit", interactions=train, items=items))
        assert fitted["items"] == len(items) and set(fitted["weights"]) == set(SOURCES)
        out = os_.run(os_.handle("recommender", "recommend", user_id="u0002", k=5,
                                 filters={"category": "laptop"}))
        assert len(out["items"]) == 5 and all(d["category"] == "laptop" for d in out["details"])
        prefs = os_.run(os_.handle("recommender", "preferences", user_id="c1",
                                   text="a camera under 400 dollars, waterproof"))
        assert prefs["category"] == "camera" and prefs["price_max"] == 400
        out = os_.run(os_.handle("recommender", "recommend", user_id="c1", k=3, explain=True))
        assert all(d["category"] == "camera" and d["price"] <= 400 for d in out["details"])
        assert len(out["explanations"]) == 3
        reply = os_.chat("recommender", "s1", "cheap running shoes")
        assert reply.count("\n") >= 1 and "shoes" in reply
        h = start_server(os_)
        try:
            url = h.url + "/v1/apps/recommender/handlers/"
            r = httpx.post(url + "recommend", json={"user_id": "u0003", "k": 4, "filters": {"price_max": 100}},
                           timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            body = body.get("result", body)
            assert len(body["items"]) == 4 and all(d["price"] <= 100 for d in body["details"])
            r = httpx.post(url + "profile", json={"user_id": "u0003"}, timeout=60)
            assert r.status_code == 200, r.text
            r = httpx.post(h.url + "/v1/apps/recommender/chat", json={"session_id": "s2",
                                                                     "message": "a novel about space"},
                           timeout=60)
            assert r.status_code == 200 and "book" in r.text
        finally:
            h.stop()


def test_evaluation_smoke(runtime):
    from llmasos.apps.recommender.evaluation import evaluate

    res = evaluate(n_users=120, n_items=150, seeds=(5,), runtime=runtime)
    for name in ("ours", "popularity", "item_knn"):
        assert 0.0 <= res[name]["ndcg@10"] <= 1.0 and 0.0 <= res[name]["recall@10"] <= 1.0
    # planted tastes: every personalised method beats popularity
    assert res["ours"]["ndcg@10"] > res["popularity"]["ndcg@10"]
    assert res["item_knn"]["ndcg@10"] > res["popularity"]["ndcg@10"]
    assert res["ratio_vs_best_baseline"] == pytest.approx(
        res["ours"]["ndcg@10"] / max(res["popularity"]["ndcg@10"], res["item_knn"]["ndcg@10"]))

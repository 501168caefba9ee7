"""`recommender`: recommendations from interactions, item text and what the user says they want.

The library core is `Recommender` (core.py); this module is the OS app around it: the catalogue and the
interactions live in the app's storage, the fitted model is cached per fit, chat messages become preferences
(the LLM with structured output, checked by rules) and then recommendations.

    from llmasos.apps.recommender import Recommender
    rec = Recommender.fit(interactions=[{"user": "u1", "item": "i3", "t": 0}, ...], items=[{"id": "i3", ...}])
    rec.recommend("u1", k=10, filters={"category": "phone", "price_max": 300})
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np

from llmasos.apps.recommender.core import SOURCES, Recommender
from llmasos.sdk import App, Manifest, Quotas, handler

__all__ = ["SOURCES", "Recommender", "RecommenderApp"]

DATA_FILE = "recommender/data.json"
FIT_KEY = "recommender/fit_id"
DEMO = {"n_users": 300, "n_items": 300, "seed": 0}


class RecommenderApp(App):
    manifest = Manifest(
        name="recommender", version="0.1.0",
        description="Recommendations: profiles from interactions and chat, several candidate sources, a learned "
                    "blend, filters, diversity and explanations.",
        permissions=["llm", "embed", "storage"],
        quotas=Quotas(storage_bytes=50_000_000), handler_timeout=600.0,
        system_prompt="You explain product recommendations briefly.",
    )

    def __init__(self) -> None:
        self._cache: dict[str, Recommender] = {}

    # -- the fitted model -------------------------------------------------------------------------------------------
    async def _model(self, ctx: Any, demo: bool = False) -> Recommender:
        keys = await ctx.storage.keys(prefix="recommender/")
        if FIT_KEY not in keys:
            if not demo:
                raise ValueError("no catalogue yet: call the fit handler (or load_demo) first")
            await self.load_demo(ctx)
            keys = [FIT_KEY]
        fit_id = await ctx.storage.get(FIT_KEY)
        rec = self._cache.get(fit_id)
        if rec is None:
            data = json.loads(await ctx.storage.read_file(DATA_FILE))
            rec = await Recommender.afit(data["interactions"], data["items"], ctx=ctx)
            for user, p in data.get("preferences", {}).items():
                rec.set_preferences(user, p)
            self._cache = {fit_id: rec}
        return rec

    async def _save(self, ctx: Any, interactions: list[dict], items: list[dict], preferences: dict) -> str:
        await ctx.storage.write_file(DATA_FILE, json.dumps({"interactions": interactions, "items": items,
                                                             "preferences": preferences}))
        fit_id = uuid.uuid4().hex
        await ctx.storage.set(FIT_KEY, fit_id)
        return fit_id

    async def _data(self, ctx: Any) -> dict:
        return json.loads(await ctx.storage.read_file(DATA_FILE))

    # -- handlers --------------------------------------------------------------------------------------------
    @handler
    async def fit(self, ctx: Any, interactions: list[dict], items: list[dict]) -> dict:
        """Store the catalogue and the interactions and fit the model (blend weights learned on a time-ordered
        validation split of these interactions)."""
        rec = await Recommender.afit(interactions, items, ctx=ctx)
        fit_id = await self._save(ctx, interactions, items, {})
        self._cache = {fit_id: rec}
        return {"items": rec.n_items, "users": len(rec.histories), "weights": rec.weights,
                "diversity": rec.diversity, "decay": list(rec.decay), "validation": rec.validation}

    @handler
    async def catalogue(self, ctx: Any, users: int = 20) -> dict:
        """The catalogue in brief (the console's pickers): its size, categories and price range, and the most
        active users; `{"fitted": false}` before the first fit."""
        if FIT_KEY not in await ctx.storage.keys(prefix="recommender/"):
            return {"fitted": False}
        rec = await self._model(ctx)
        prices = rec.prices[np.isfinite(rec.prices)]
        active = sorted(rec.histories, key=lambda u: -len(rec.histories[u]))[:max(int(users), 0)]
        return {"fitted": True, "items": rec.n_items, "users": len(rec.histories), "categories": rec.categories,
                "price_min": float(prices.min()) if len(prices) else None,
                "price_max": float(prices.max()) if len(prices) else None, "active_users": active}

    @handler
    async def load_demo(self, ctx: Any, n_users: int = DEMO["n_users"], n_items: int = DEMO["n_items"],
                        seed: int = DEMO["seed"]) -> dict:
        """Fit on the synthetic shop of the evaluation (generated from the seed)."""
        from llmasos.apps.recommender.synthetic import make_dataset

        interactions, items = make_dataset(n_users=n_users, n_items=n_items, seed=seed)
        return await self.fit(ctx, interactions, items)

    @handler
    async def add_interactions(self, ctx: Any, interactions: list[dict]) -> dict:
        """Append interactions and refit."""
        data = await self._data(ctx)
        data["interactions"].extend(interactions)
        rec = await Recommender.afit(data["interactions"], data["items"], ctx=ctx)
        for user, p in data.get("preferences", {}).items():
            rec.set_preferences(user, p)
        fit_id = await self._save(ctx, data["interactions"], data["items"], data.get("preferences", {}))
        self._cache = {fit_id: rec}
        return {"interactions": len(data["interactions"]), "users": len(rec.histories)}

    @handler
    async def recommend(self, ctx: Any, user_id: str, k: int = 10, filters: dict | None = None,
                        explain: bool = False) -> dict:
        """Item ids best first (never one the user has), with their details; `explain`: an LLM sentence each."""
        rec = await self._model(ctx)
        ids = await rec.arecommend(user_id, k=k, filters=filters, ctx=ctx)
        out: dict[str, Any] = {"user": user_id, "items": ids, "details": [_detail(rec, i) for i in ids]}
        if explain:
            out["explanations"] = await rec.aexplain(user_id, ids, ctx=ctx, filters=filters)
        return out

    @handler
    async def set_preferences(self, ctx: Any, user_id: str, preferences: dict) -> dict:
        """Explicit preferences (category, price_max, price_min, keywords, item attributes) for later requests."""
        rec = await self._model(ctx)
        prefs = rec.set_preferences(user_id, preferences)
        await self._store_prefs(ctx, user_id, prefs)
        return {"user": user_id, "preferences": prefs}

    @handler
    async def preferences(self, ctx: Any, user_id: str, text: str) -> dict:
        """Preferences from a chat message (LLM structured output + rules); they join the user's profile."""
        rec = await self._model(ctx)
        out = await rec.apreferences_from_text(user_id, text, ctx=ctx)
        await self._store_prefs(ctx, user_id, rec.profiles[user_id]["preferences"])
        return out

    @handler
    async def profile(self, ctx: Any, user_id: str) -> dict:
        return (await self._model(ctx)).profile(user_id)

    @handler
    async def explain(self, ctx: Any, user_id: str, items: list[str], filters: dict | None = None) -> list[dict]:
        """Why each item suits the user: the sources behind it, the user's closest items, and an LLM sentence."""
        rec = await self._model(ctx)
        return await rec.aexplain(user_id, items, ctx=ctx, filters=filters)

    async def _store_prefs(self, ctx: Any, user_id: str, prefs: dict) -> None:
        data = await self._data(ctx)
        data.setdefault("preferences", {})[user_id] = prefs
        await ctx.storage.write_file(DATA_FILE, json.dumps(data))

    async def chat(self, ctx: Any, session_id: str, message: str) -> str:
        """A request in words ("cheap wireless headphones for running") -> five recommendations with reasons.
        With no catalogue yet, the demo shop is loaded first."""
        rec = await self._model(ctx, demo=True)
        user = ctx.user or f"chat:{session_id}"
        prefs = await rec.apreferences_from_text(user, message, ctx=ctx)
        ids = await rec.arecommend(user, k=5, ctx=ctx)
        if not ids:
            return "Nothing in the catalogue matches that; try a higher price or another category."
        asked = ", ".join(f"{k}={prefs[k]}" for k in ("category", "price_max") if prefs.get(k))
        kws = ", ".join(prefs.get("keywords") or [])
        head = "Here is what I would pick" + (f" ({asked}" + (f"; about {kws}" if kws else "") + ")"
                                              if asked or kws else "") + ":"
        lines = [head]
        for n, i in enumerate(ids, 1):
            r = rec.reasons(user, i)
            d = _detail(rec, i)
            price = f", {d['price']:.2f}" if isinstance(d.get("price"), int | float) else ""
            lines.append(f"{n}. {d['name']} [{d['id']}] ({d.get('category')}{price}): "
                         f"{rec._template(r).split(': ', 1)[1]}")
        return "\n".join(lines)


def _detail(rec: Recommender, item_id: str) -> dict:
    it = rec.items[rec.item_index[item_id]]
    return {k: it.get(k) for k in ("id", "name", "category", "price", "description") if k in it}

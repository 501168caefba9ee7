"""The recommender's library core: profiles, candidate generation from several sources, a learned blend,
filtering and diversity, explanations.

    rec = Recommender.fit(interactions=[{"user": "u1", "item": "i3", "t": 0}, ...], items=[{"id": "i3", ...}])
    rec.recommend("u1", k=10, filters={"category": "phone", "price_max": 300})

Sources (each z-scored per user, then blended with weights fitted on a validation split carved from the
training interactions: the last 20% of each user's interactions, by t):
- `knn`, `knn_recent`: item-item cosine collaborative filtering over the whole history / recent items;
- `transition`: what followed the user's last items in other users' sequences (directional co-occurrence);
- `als`: implicit's alternating least squares matrix factorisation (CPU);
- `content_emb`, `content_tfidf`: the user's recent items against item text (all-MiniLM-L6-v2, TF-IDF);
- `category`, `price`: the user's category shares and price range;
- `popularity`: interaction counts (the cold-start source).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from llmasos.apps.recommender import prefs as P
from llmasos.sdk import local_embed

SOURCES = ("knn", "knn_recent", "knn_last", "transition", "als", "content_emb", "content_tfidf", "category", "price",
           "popularity")
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
DIVERSITY_GRID = (0.0, 0.05, 0.1, 0.2, 0.3)
DECAYS = ((0.7, 0.4), (0.85, 0.6), (0.95, 0.8))  # (recent items, last items) per step back
CANDIDATES_PER_SOURCE = 100
TRANSITION_WINDOW = 5  # an item "follows" the next 5 items of a sequence, weighted 1/distance
MAX_VALIDATION_USERS = 3000


def _direct_embed(texts: list[str]) -> np.ndarray | None:
    """The shared default embedder of a library used without a context (None where it is not installed)."""
    try:
        return local_embed(texts)
    except FileNotFoundError:
        return None


def item_text(item: dict) -> str:
    parts = [str(item.get("category", "")), str(item.get("name", "")), str(item.get("description", ""))]
    parts += [str(v) for k, v in item.items() if k not in ("id", "name", "description", "category", "price")
              and isinstance(v, str)]
    return ". ".join(p for p in parts if p)


def ndcg_at(top: np.ndarray, targets: list[set[int]], k: int = 10) -> np.ndarray:
    """Binary NDCG@k per row of `top` (item indices, best first; -1 is an empty slot)."""
    top = np.asarray(top)[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    width = int(max(top.max(initial=0), max((max(t) for t in targets if t), default=0))) + 2
    hit = np.zeros((len(targets), width), bool)
    for r, tgt in enumerate(targets):
        hit[r, list(tgt)] = True
    gains = np.take_along_axis(hit, np.where(top < 0, width - 1, top), axis=1).astype(float)
    ideal = np.cumsum(disc)[np.clip([len(t) for t in targets], 1, k) - 1]
    out = gains @ disc[:top.shape[1]] / ideal
    return np.where([bool(t) for t in targets], out, 0.0)


def _zscore(m: np.ndarray) -> np.ndarray:
    mu = m.mean(axis=1, keepdims=True)
    sd = m.std(axis=1, keepdims=True)
    return np.where(sd > 1e-9, (m - mu) / np.maximum(sd, 1e-9), 0.0).astype(np.float32)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class _Models:
    """The collaborative sources fitted on one set of histories (the fit part, then all of them)."""

    def __init__(self, histories: dict[str, list[int]], n_items: int) -> None:
        users = list(histories)
        self.user_row = {u: r for r, u in enumerate(users)}
        rows, cols = [], []
        trans: dict[tuple[int, int], float] = {}
        for r, u in enumerate(users):
            h = histories[u]
            rows += [r] * len(h)
            cols += h
            for a in range(len(h)):
                for d in range(1, TRANSITION_WINDOW + 1):
                    if a + d < len(h):
                        key = (h[a], h[a + d])
                        trans[key] = trans.get(key, 0.0) + 1.0 / d
        x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), n_items))
        x.data[:] = 1.0
        self.x = x
        counts = np.asarray(x.sum(axis=0)).ravel()
        self.popularity = np.log1p(counts).astype(np.float32)
        norms = np.sqrt(np.maximum(counts, 1e-9))
        xn = x @ sp.diags(1.0 / norms)
        sim = (xn.T @ xn).tocsr()
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.sim = sim.astype(np.float32)
        if trans:
            (ta, tb), tv = zip(*trans.keys(), strict=True), list(trans.values())
            t = sp.csr_matrix((np.array(tv, np.float32), (np.array(ta), np.array(tb))), shape=(n_items, n_items))
            rs = np.asarray(t.sum(axis=1)).ravel()
            self.trans = (sp.diags(1.0 / np.maximum(rs, 1e-9)) @ t).tocsr().astype(np.float32)
        else:
            self.trans = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.user_factors, self.item_factors = self._als(x)

    @staticmethod
    def _als(x: sp.csr_matrix) -> tuple[np.ndarray | None, np.ndarray | None]:
        if x.shape[0] < 2 or x.nnz == 0:
            return None, None
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        factors = int(min(48, max(4, min(x.shape) // 4)))
        with threadpool_limits(1):
            model = AlternatingLeastSquares(factors=factors, regularization=0.05, alpha=20.0, iterations=15,
                                            random_state=0, num_threads=1, calculate_training_loss=False)
            model.fit(x, show_progress=False)
        return np.asarray(model.user_factors), np.asarray(model.item_factors)

    def als_scores(self, users: list[str], histories: list[list[int]]) -> np.ndarray:
        n_items = self.x.shape[1]
        out = np.zeros((len(users), n_items), np.float32)
        if self.item_factors is None:
            return out
        y = self.item_factors
        yty = None
        for r, (u, h) in enumerate(zip(users, histories, strict=True)):
            row = self.user_row.get(u)
            if row is not None:
                out[r] = y @ self.user_factors[row]
            elif h:  # a user the model has not seen: solve their factors (one ALS half-step)
                if yty is None:
                    yty = y.T @ y
                yh = y[h]
                a = yty + 20.0 * yh.T @ yh + 0.05 * np.eye(y.shape[1], dtype=np.float32)
                out[r] = y @ np.linalg.solve(a, 21.0 * yh.sum(axis=0))
        return out


class Recommender:
    """Fit with `Recommender.fit(interactions, items)`; see the module docstring."""

    def __init__(self, items: list[dict], *, ctx: Any = None, runtime: Any = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.items = [dict(it) for it in items]
        self.item_index = {str(it["id"]): i for i, it in enumerate(self.items)}
        if len(self.item_index) != len(self.items):
            raise ValueError("item ids must be unique")
        self.n_items = len(self.items)
        self.categories = sorted({str(it.get("category", "")) for it in self.items if it.get("category")})
        cat_pos = {c: j for j, c in enumerate(self.categories)}
        self.cat_of = np.array([cat_pos.get(str(it.get("category", "")), -1) for it in self.items])
        self.prices = np.array([float(it["price"]) if isinstance(it.get("price"), int | float) else np.nan
                                for it in self.items])
        texts = [item_text(it) for it in self.items]
        self.tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, stop_words="english")
        self.x_tfidf = self.tfidf.fit_transform(texts).astype(np.float32).tocsr()
        self.vocabulary = {w for w in self.tfidf.vocabulary_ if " " not in w}
        self.synonyms = self._category_synonyms()
        self.embeddings: np.ndarray | None = None
        self.ctx, self.runtime = ctx, runtime
        self.histories: dict[str, list[int]] = {}
        self.owned: dict[str, set[int]] = {}
        self.profiles: dict[str, dict] = {}
        self.weights = dict.fromkeys(SOURCES, 1.0)
        self.diversity = 0.0
        self.decay = DECAYS[1]
        self.validation: dict[str, Any] = {}
        self.models: _Models | None = None
        self._embed_fn: Callable[[list[str]], np.ndarray | None] | None = None

    # -- fitting -------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, interactions: list[dict], items: list[dict], *, ctx: Any = None, runtime: Any = None) -> Recommender:
        """Profiles from the interactions; item embeddings from the runtime's embedder when one is given, else
        the offline default embedder loaded here (TF-IDF alone when neither is there); a blend fitted on a
        time-ordered validation split of these interactions."""
        rec = cls(items, ctx=ctx, runtime=runtime)
        if runtime is not None:
            rec._embed_fn = lambda texts: np.asarray(
                runtime.run(_embed_async(runtime.ctx, texts)), dtype=np.float32)
        else:
            rec._embed_fn = _direct_embed
        rec.embeddings = rec._embed_fn([item_text(it) for it in rec.items]) if rec.items else None
        rec._fit_interactions(interactions)
        return rec

    @classmethod
    async def afit(cls, interactions: list[dict], items: list[dict], *, ctx: Any) -> Recommender:
        """`fit` inside a handler: the item embeddings come from `await ctx.embed`."""
        rec = cls(items, ctx=ctx)
        if rec.items:
            rec.embeddings = np.asarray(await _embed_async(ctx, [item_text(it) for it in rec.items]), np.float32)
        rec._fit_interactions(interactions)
        return rec

    def _fit_interactions(self, interactions: list[dict]) -> None:
        self.histories, self.owned = self._histories(interactions)
        self._tune()
        self.models = _Models(self.histories, self.n_items)

    def _histories(self, interactions: list[dict]) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
        events: dict[str, list[tuple[float, int, int]]] = {}
        for n, x in enumerate(interactions):
            i = self.item_index.get(str(x["item"]))
            if i is None:
                continue
            events.setdefault(str(x["user"]), []).append((float(x.get("t", n)), n, i))
        hist, owned = {}, {}
        for u, ev in events.items():
            ev.sort()
            seq: list[int] = []
            for _, _, i in ev:  # a repeated item moves to its latest position
                if i in seq:
                    seq.remove(i)
                seq.append(i)
            hist[u], owned[u] = seq, set(seq)
        return hist, owned

    def _tune(self) -> None:
        """Blend weights by coordinate search on NDCG@10 of a validation split carved from these interactions
        (the last 20% of each user's history), then the diversity weight."""
        fit_h, targets = {}, {}
        for u, h in self.histories.items():
            n_val = math.ceil(0.2 * len(h)) if len(h) >= 3 else 0
            fit_h[u] = h[:len(h) - n_val]
            if n_val:
                targets[u] = set(h[len(h) - n_val:])
        val_users = sorted(targets)[:MAX_VALIDATION_USERS]
        if len(val_users) < 5 or self.n_items < 12:
            self.validation = {"users": len(val_users), "tuned": False}
            return
        models = _Models(fit_h, self.n_items)
        owned = np.zeros((len(val_users), self.n_items), bool)
        for r, u in enumerate(val_users):
            owned[r, fit_h[u]] = True
        tgts = [targets[u] for u in val_users]
        best = (-1.0, 0.0, dict.fromkeys(SOURCES, 1.0), self.decay, {})
        for decay in DECAYS:
            z = self._source_matrix(models, val_users, [fit_h[u] for u in val_users], decay)
            start, val, w = self._coordinate_search(z, owned, tgts)
            if val > best[0]:
                best = (val, start, w, decay, z)
        val, start, w, self.decay, z = best
        self.weights = w
        blended = np.where(owned, -np.inf, sum(w[n] * z[n] for n in SOURCES if w[n]))
        div_scores = {}
        for lam in DIVERSITY_GRID:
            tops = np.array([self._mmr(blended[r], np.flatnonzero(np.isfinite(blended[r])), 10, lam)
                             for r in range(len(val_users))])
            div_scores[lam] = float(ndcg_at(tops, tgts).mean())
        top = max(div_scores.values())
        # the most diverse setting that costs at most 0.002 NDCG on validation
        self.diversity = max(lam for lam, v in div_scores.items() if v >= top - 0.002)
        self.validation = {"users": len(val_users), "tuned": True, "ndcg_equal_weights": round(start, 4),
                           "ndcg_tuned": round(val, 4), "decay": list(self.decay),
                           "ndcg_by_diversity": {str(k): round(v, 4) for k, v in div_scores.items()}}

    @staticmethod
    def _coordinate_search(z: dict[str, np.ndarray], owned: np.ndarray, tgts: list[set[int]]
                           ) -> tuple[float, float, dict[str, float]]:
        """Weights on a grid, one source at a time, from equal weights, while NDCG@10 improves."""
        def score(w: dict[str, float]) -> float:
            s = sum(w[name] * z[name] for name in SOURCES if w[name])
            s = np.where(owned, -np.inf, s)
            return float(ndcg_at(_topk(s, 10), tgts).mean())

        w = dict.fromkeys(SOURCES, 1.0)
        start = best = score(w)
        for _ in range(4):
            improved = False
            for name in SOURCES:
                for g in GRID:
                    trial = {**w, name: g}
                    if g == w[name] or not any(trial.values()):
                        continue
                    val = score(trial)
                    if val > best + 1e-6:
                        best, w, improved = val, trial, True
            if not improved:
                break
        return start, best, w

    # -- scoring ---------------------------------------------------------------------------------------------------
    def _source_matrix(self, models: _Models, users: list[str], hists: list[list[int]],
                       decay: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        b, n = len(users), self.n_items
        decay = decay or self.decay
        rows, cols, uni, rec, last = [], [], [], [], []
        for r, h in enumerate(hists):
            m = len(h)
            for k, i in enumerate(h):
                rows.append(r)
                cols.append(i)
                uni.append(1.0)
                rec.append(decay[0] ** (m - 1 - k))
                last.append(decay[1] ** (m - 1 - k) if m - 1 - k < 5 else 0.0)

        def mat(vals: list[float]) -> sp.csr_matrix:
            return sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(b, n))

        h_uni, h_rec, h_last = mat(uni), mat(rec), mat(last)
        out = {"knn": np.asarray((h_uni @ models.sim).todense()),
               "knn_recent": np.asarray((h_rec @ models.sim).todense()),
               "knn_last": np.asarray((h_last @ models.sim).todense()),
               "transition": np.asarray((h_last @ models.trans).todense()),
               "als": models.als_scores(users, hists),
               "content_tfidf": np.asarray((h_rec @ self.x_tfidf @ self.x_tfidf.T).todense())}
        out["content_emb"] = (np.asarray(h_rec @ self.embeddings) @ self.embeddings.T
                              if self.embeddings is not None else np.zeros((b, n), np.float32))
        onehot = sp.csr_matrix((np.ones(int((self.cat_of >= 0).sum()), np.float32),
                                (np.flatnonzero(self.cat_of >= 0), self.cat_of[self.cat_of >= 0])),
                               shape=(n, max(1, len(self.categories))))
        share = np.asarray((h_rec @ onehot).todense())
        share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-9)
        out["category"] = np.where(self.cat_of >= 0, share[:, np.maximum(self.cat_of, 0)], 0.0)
        out["price"] = self._price_scores(h_rec)
        out["popularity"] = np.broadcast_to(models.popularity, (b, n))
        return {k: _zscore(np.asarray(v, np.float32)) for k, v in out.items()}

    def _price_scores(self, h: sp.csr_matrix) -> np.ndarray:
        lp = np.log(np.where(np.isfinite(self.prices) & (self.prices > 0), self.prices, np.nan))
        known = np.isfinite(lp)
        out = np.zeros(h.shape, np.float32)
        if not known.any():
            return out
        hk = h.multiply(known[None, :]).tocsr()
        wsum = np.asarray(hk.sum(axis=1)).ravel()
        lp0 = np.where(known, lp, 0.0)
        mu = (hk @ lp0) / np.maximum(wsum, 1e-9)
        var = (hk @ lp0 ** 2) / np.maximum(wsum, 1e-9) - mu ** 2
        sd = np.maximum(np.sqrt(np.maximum(var, 0)), 0.3)
        s = -((lp0[None, :] - mu[:, None]) ** 2) / (2 * sd[:, None] ** 2)
        s = np.where(known[None, :], s, s.min(axis=1, keepdims=True) if s.size else 0)
        return np.where(wsum[:, None] > 0, s, 0.0).astype(np.float32)

    def _similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Item-item similarity for diversity: half same category, half content cosine."""
        same = (self.cat_of[a][:, None] == self.cat_of[b][None, :]) & (self.cat_of[a][:, None] >= 0)
        vecs = self._content_vectors()
        cos = vecs[a] @ vecs[b].T
        return 0.5 * same + 0.5 * np.clip(cos, 0, 1)

    def _content_vectors(self) -> np.ndarray:
        """Dense unit vectors of the items' text: the embeddings, else a reduced TF-IDF."""
        if self.embeddings is not None:
            return self.embeddings
        if getattr(self, "_tfidf_dense", None) is None:
            x = self.x_tfidf
            if x.shape[1] > 256:
                from sklearn.decomposition import TruncatedSVD

                x = TruncatedSVD(n_components=min(128, x.shape[0] - 1), random_state=0).fit_transform(x)
            x = np.asarray(x.todense() if sp.issparse(x) else x, np.float32)
            self._tfidf_dense = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        return self._tfidf_dense

    def _mmr(self, scores: np.ndarray, candidates: np.ndarray, k: int, lam: float) -> list[int]:
        """Maximal marginal relevance over the best candidates: relevance (scaled to [0, 1]) minus `lam` times
        the similarity to what is already chosen."""
        if len(candidates) == 0:
            return [-1] * k
        pool = candidates[np.argsort(-scores[candidates], kind="stable")[:max(5 * k, 50)]]
        if lam <= 0:
            out = list(pool[:k])
        else:
            rel = scores[pool]
            rel = (rel - rel.min()) / max(float(rel.max() - rel.min()), 1e-9)
            sim = self._similarity(pool, pool)
            chosen: list[int] = []
            penalty = np.zeros(len(pool))
            avail = np.ones(len(pool), bool)
            for _ in range(min(k, len(pool))):
                j = int(np.argmax(np.where(avail, rel - lam * penalty, -np.inf)))
                chosen.append(j)
                avail[j] = False
                penalty = np.maximum(penalty, sim[:, j])
            out = [int(pool[j]) for j in chosen]
        return out + [-1] * (k - len(out))

    # -- profiles ----------------------------------------------------------------------------------------------
    def _category_synonyms(self) -> dict[str, str]:
        syn: dict[str, str] = {}
        for c in self.categories:
            syn[c.lower()] = c
            syn[c.lower().rstrip("s")] = c
        for it in self.items:  # nouns of the item names that only one category uses ("earbuds", "novel")
            c = str(it.get("category", ""))
            for w in P.WORD_RE.findall(str(it.get("name", "")).lower()):
                syn.setdefault(w, c)
        counts: dict[str, set[str]] = {}
        for it in self.items:
            for w in P.WORD_RE.findall(str(it.get("name", "")).lower()):
                counts.setdefault(w, set()).add(str(it.get("category", "")))
        return {w: c for w, c in syn.items() if w in self.categories or len(counts.get(w, {c})) == 1}

    def set_preferences(self, user: str, preferences: dict) -> dict:
        """Explicit preferences (`category`, `price_max`, `price_min`, `keywords`, any item attribute): used as
        filters and, for keywords, as a content query, on every later `recommend` of this user."""
        prof = self.profiles.setdefault(str(user), {"preferences": {}})
        prof["preferences"].update({k: v for k, v in preferences.items() if v not in (None, "", [])})
        return dict(prof["preferences"])

    def profile(self, user: str) -> dict:
        h = self.histories.get(str(user), [])
        cats: dict[str, int] = {}
        for i in h:
            c = str(self.items[i].get("category", ""))
            cats[c] = cats.get(c, 0) + 1
        prices = self.prices[h] if h else np.array([])
        prices = prices[np.isfinite(prices)]
        return {"user": str(user), "interactions": len(h), "recent": [self.items[i]["id"] for i in h[-5:]],
                "recent_names": [self.items[i].get("name", self.items[i]["id"]) for i in h[-5:]],
                "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
                "median_price": float(np.median(prices)) if len(prices) else None,
                "preferences": dict(self.profiles.get(str(user), {}).get("preferences", {}))}

    def _rule_prefs(self, text: str) -> dict:
        return P.rule_preferences(text, self.categories, self.synonyms, self.vocabulary)

    def _finish_prefs(self, merged: dict, cheap: bool) -> dict:
        if merged["price_max"] is None and cheap:  # "cheap": the lower third of the category's prices
            mask = np.isfinite(self.prices)
            if merged["category"] in self.categories:
                mask &= self.cat_of == self.categories.index(merged["category"])
            if mask.any():
                merged["price_max"] = round(float(np.quantile(self.prices[mask], 0.33)), 2)
                merged["source"]["price_max"] = "rules (cheap)"
        return merged

    def _category_supported(self, text: str, category: str) -> bool:
        """The model's category counts when at least 3 of the 10 items closest to the text (TF-IDF) are in it."""
        s = np.asarray((self.tfidf.transform([text]) @ self.x_tfidf.T).todense()).ravel()
        top = np.argsort(-s, kind="stable")[:10]
        top = top[s[top] > 0]
        return int((self.cat_of[top] == self.categories.index(category)).sum()) >= 3

    async def apreferences_from_text(self, user: str, text: str, *, ctx: Any = None, use_llm: bool = True) -> dict:
        """Preferences from a chat message: the LLM fills the schema (structured output), the rules check and
        complete it; the result joins the user's profile."""
        ctx = ctx or self.ctx or (self.runtime.ctx if self.runtime is not None else None)
        rules = self._rule_prefs(text)
        llm = None
        if use_llm and ctx is not None:
            try:
                llm = await ctx.llm.structured(P.prompt(text, self.categories), P.schema(self.categories),
                                               max_tokens=96, temperature=0.0)
            except ValueError:
                llm = None
        merged = P.merge(rules, llm, self.categories, self.vocabulary, text)
        if merged["source"]["category"] == "llm" and not self._category_supported(text, merged["category"]):
            merged["category"], merged["source"]["category"] = None, "llm (rejected: no support in the text)"
        merged = self._finish_prefs(merged, rules["cheap"])
        merged["llm"] = llm
        self.set_preferences(user, {k: merged[k] for k in ("category", "price_max", "keywords")})
        return merged

    def preferences_from_text(self, user: str, text: str) -> dict:
        """The synchronous `apreferences_from_text` (on `runtime`, or the shared in-process runtime)."""
        rt = self._runtime()
        return rt.run(self.apreferences_from_text(user, text, ctx=rt.ctx))

    def _runtime(self) -> Any:
        if self.runtime is None:
            from llmasos.apps.recommender import RecommenderApp
            from llmasos.sdk import shared_runtime
            self.runtime = shared_runtime(RecommenderApp())
        return self.runtime

    # -- recommending -------------------------------------------------------------------------------------------
    def _effective_filters(self, user: str, filters: dict | None) -> dict:
        prefs = dict(self.profiles.get(str(user), {}).get("preferences", {}))
        return {**prefs, **(filters or {})}

    def _allowed(self, filters: dict) -> np.ndarray:
        ok = np.ones(self.n_items, bool)
        for key, val in filters.items():
            if val is None or key == "keywords" or key == "query":
                continue
            if key == "price_max":
                ok &= np.isfinite(self.prices) & (self.prices <= float(val))
            elif key == "price_min":
                ok &= np.isfinite(self.prices) & (self.prices >= float(val))
            else:
                vals = {str(v) for v in val} if isinstance(val, list | tuple | set) else {str(val)}
                ok &= np.array([str(it.get(key)) in vals for it in self.items])
        return ok

    def _query_text(self, filters: dict) -> str:
        kws = filters.get("keywords") or []
        if isinstance(kws, str):
            kws = [kws]
        return " ".join([str(k) for k in kws] + ([str(filters["query"])] if filters.get("query") else []))

    def _query_scores(self, text: str, qvec: np.ndarray | None) -> np.ndarray:
        s = np.asarray((self.tfidf.transform([text]) @ self.x_tfidf.T).todense()).ravel()
        if qvec is not None and self.embeddings is not None:
            s = s + self.embeddings @ np.asarray(qvec, np.float32).ravel()
        return _zscore(s[None, :])[0]

    def scores(self, user: str, filters: dict | None = None, qvec: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """(blended scores with -inf where excluded, the per-source z-scores, the effective filters)."""
        user = str(user)
        eff = self._effective_filters(user, filters)
        h = self.histories.get(user, [])
        if h and self.models is not None:
            z = {k: v[0] for k, v in self._source_matrix(self.models, [user], [h]).items()}
            s = sum(self.weights[n] * z[n] for n in SOURCES if self.weights[n])
            s = np.asarray(s if not isinstance(s, int) else z["popularity"], np.float32)
        else:  # cold start: popularity (and the query below)
            pop = self.models.popularity if self.models is not None else np.zeros(self.n_items, np.float32)
            z = {"popularity": _zscore(pop[None, :])[0]}
            s = z["popularity"].copy()
        text = self._query_text(eff)
        if text.strip():
            z["query"] = self._query_scores(text, qvec)
            s = s + 1.5 * max(1.0, max(self.weights.values())) * z["query"]
        s = s.astype(np.float64)
        s[~self._allowed(eff)] = -np.inf
        s[list(self.owned.get(user, ()))] = -np.inf
        return s, z, eff

    def _candidates(self, s: np.ndarray, z: dict[str, np.ndarray], k: int) -> np.ndarray:
        """The union of each source's best items that survive the filters; the rest by blended score when the
        union is too small."""
        allowed = np.isfinite(s)
        cands: set[int] = set()
        for v in z.values():
            vv = np.where(allowed, v, -np.inf)
            top = np.argsort(-vv, kind="stable")[:CANDIDATES_PER_SOURCE]
            cands.update(int(i) for i in top if allowed[i])
        if len(cands) < 5 * k:
            cands.update(int(i) for i in np.argsort(-s, kind="stable")[:5 * k] if allowed[i])
        return np.array(sorted(cands), dtype=int)

    def _recommend(self, user: str, k: int, filters: dict | None, qvec: np.ndarray | None) -> list[str]:
        s, z, _ = self.scores(user, filters, qvec)
        picks = self._mmr(s, self._candidates(s, z, k), k, self.diversity)
        return [self.items[i]["id"] for i in picks if i >= 0]

    def recommend(self, user: str, k: int = 10, filters: dict | None = None) -> list[str]:
        """Item ids, best first; never an item the user already has; `filters`: `category` (one or a list),
        `price_max`, `price_min`, `keywords` (a content query), any item attribute by value."""
        eff = self._effective_filters(str(user), filters)
        text = self._query_text(eff)
        qvec = None
        if text.strip() and self.embeddings is not None:
            if self._embed_fn is not None:
                qvec = self._embed_fn([text])[0]
            elif self.runtime is not None:
                qvec = self.runtime.run(_embed_async(self.runtime.ctx, [text]))[0]
        return self._recommend(user, k, filters, qvec)

    async def arecommend(self, user: str, k: int = 10, filters: dict | None = None, *, ctx: Any = None
                         ) -> list[str]:
        """`recommend` inside a handler: the query embedding comes from `await ctx.embed`."""
        ctx = ctx or self.ctx
        text = self._query_text(self._effective_filters(str(user), filters))
        qvec = None
        if text.strip() and self.embeddings is not None and ctx is not None:
            qvec = np.asarray((await _embed_async(ctx, [text]))[0], np.float32)
        return self._recommend(user, k, filters, qvec)

    # -- explanations -------------------------------------------------------------------------------------------
    def reasons(self, user: str, item_id: str, filters: dict | None = None) -> dict:
        """Why an item is recommended: the sources that push it most, the user's items closest to it."""
        i = self.item_index[str(item_id)]
        s, z, eff = self.scores(user, filters)
        contrib = {n: float(self.weights.get(n, 1.0) * v[i]) for n, v in z.items()}
        top = [n for n, c in sorted(contrib.items(), key=lambda kv: -kv[1]) if c > 0][:3]
        h = self.histories.get(str(user), [])
        similar = []
        if h:
            sims = self._similarity(np.array(h), np.array([i]))[:, 0]
            similar = [self.items[h[j]]["id"] for j in np.argsort(-sims)[:2] if sims[j] > 0.3]
        it = self.items[i]
        return {"item": it["id"], "name": it.get("name", it["id"]), "category": it.get("category"),
                "price": it.get("price"), "sources": top, "because_of": similar,
                "because_of_names": [self.items[self.item_index[x]].get("name", x) for x in similar],
                "matches": [w for w in self._query_text(eff).split() if w.lower() in item_text(it).lower()]}

    def _template(self, r: dict) -> str:
        parts = []
        names = {"knn": "people with your history liked it", "knn_recent": "it goes with what you looked at lately",
                 "transition": "it often comes next after your latest items",
                 "als": "it fits your overall taste profile",
                 "content_emb": "its description is close to items you liked",
                 "content_tfidf": "its description shares words with items you liked",
                 "category": "it is in a category you buy often", "price": "it is in your usual price range",
                 "popularity": "it is popular", "query": "it matches what you asked for"}
        parts += [names[s] for s in r["sources"] if s in names]
        if r["because_of"]:
            parts.append(f"it is similar to {', '.join(r['because_of_names'])}")
        if r["matches"]:
            parts.append("it mentions " + ", ".join(r["matches"]))
        return f"{r['name']}: " + ("; ".join(parts) if parts else "a good match for you") + "."

    async def aexplain(self, user: str, item_ids: list[str], *, ctx: Any = None, filters: dict | None = None,
                       max_tokens: int = 48) -> list[dict]:
        """One explanation per item: the reasons (computed) and one sentence written by the LLM from them (the
        template sentence when the model returns nothing usable)."""
        ctx = ctx or self.ctx or (self.runtime.ctx if self.runtime is not None else None)
        out = []
        for item in item_ids:
            r = self.reasons(user, item, filters)
            r["template"] = self._template(r)
            text = ""
            if ctx is not None:
                msg = [{"role": "system", "content": "You explain product recommendations in one short sentence."},
                       {"role": "user", "content": f"Product: {r['name']} ({r['category']}, price {r['price']}). "
                        f"Facts: {r['template']} Explain in one sentence why it is recommended."}]
                res = await ctx.llm.chat(msg, max_tokens=max_tokens, temperature=0.0)
                text = res["text"].strip()
            r["explanation"] = text if _about(text, r["template"]) else r["template"]
            out.append(r)
        return out

    def explain(self, user: str, item_ids: list[str] | str, filters: dict | None = None) -> list[dict]:
        """The synchronous `aexplain`."""
        ids = [item_ids] if isinstance(item_ids, str) else list(item_ids)
        rt = self._runtime()
        return rt.run(self.aexplain(user, ids, ctx=rt.ctx, filters=filters))


def _about(sentence: str, facts: str) -> bool:
    """The model's sentence is kept only when it is a sentence about the facts it was given (it names the
    product, its category or a reason), so a small model's pleasantry never replaces the computed reasons."""
    words = set(re.findall(r"[a-z]{4,}", sentence.lower()))
    return len(sentence.split()) >= 3 and bool(words & set(re.findall(r"[a-z]{4,}", facts.lower())) - _GENERIC)


_GENERIC = {"this", "that", "with", "your", "from", "have", "will", "recommended", "recommend", "product", "because",
            "price", "good", "match"}


async def _embed_async(ctx: Any, texts: list[str]) -> list[list[float]]:
    out: list[list[float]] = []
    for a in range(0, len(texts), 256):
        out.extend(await ctx.embed(texts[a:a + 256]))
    return out

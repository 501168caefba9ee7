"""A synthetic shop with planted tastes, generated deterministically from a seed (only the vocabulary,
data/catalog.json, is stored).

- items: `n_items` spread over the catalogue's 10 categories x 3 styles (30 taste clusters) and 3 price tiers,
  each with a brand, a price and a templated description; a Zipf popularity skew over items;
- users: 1 or 2 taste clusters (the second usually in another category) and a preferred price tier;
- sequential behaviour: a user walks forward through a cluster's items (series order, steps of 1-2), and a
  two-cluster user drifts from the first cluster to the second over time; some picks are the popular items of
  the cluster; a share of the interactions is noise drawn from global popularity.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


@cache
def catalog_spec() -> dict:
    return json.loads((DATA / "catalog.json").read_text())


def make_items(n_items: int = 400, seed: int = 0) -> list[dict]:
    spec = catalog_spec()
    rng = np.random.default_rng(seed)
    clusters = [(c, s) for c, v in spec["categories"].items() for s in v["styles"]]
    tiers = list(spec["tiers"])
    items = []
    for n in range(n_items):
        cat, style = clusters[n % len(clusters)]
        cs = spec["categories"][cat]
        tier = tiers[int(rng.choice(3, p=[0.35, 0.4, 0.25]))]
        mult, adjs = spec["tiers"][tier]
        price = round(float(cs["price"] * mult * np.exp(rng.normal(0, 0.15))), 2)
        brand = spec["brands"][int(rng.integers(len(spec["brands"])))]
        words = cs["styles"][style]
        feats = list(rng.choice(words, size=2, replace=False))
        noun = cs["nouns"][int(rng.integers(len(cs["nouns"])))]
        filler = " ".join(rng.choice(spec["filler"], size=2, replace=False))
        adj = adjs[int(rng.integers(len(adjs)))]
        desc = f"{adj.capitalize()} {brand} {noun} with {feats[0]} and {feats[1]}, {filler}."
        items.append({"id": f"i{n:04d}", "name": f"{brand} {style} {noun} {n}", "description": desc,
                      "category": cat, "style": style, "tier": tier, "price": price, "brand": brand})
    return items


def make_dataset(n_users: int = 400, n_items: int = 400, seed: int = 0, noise: float = 0.15,
                 min_len: int = 8, max_len: int = 30) -> tuple[list[dict], list[dict]]:
    """(interactions, items): interactions are {"user", "item", "t"} with per-user increasing t."""
    items = make_items(n_items, seed)
    rng = np.random.default_rng(seed + 1)
    clusters: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        clusters.setdefault((it["category"], it["style"]), []).append(i)
    keys = list(clusters)
    pop = 1.0 / (1 + rng.permutation(n_items)) ** 0.8  # Zipf-like skew, random over items
    pop /= pop.sum()
    tiers = ["budget", "mid", "premium"]
    interactions = []
    for u in range(n_users):
        first = int(rng.integers(len(keys)))
        tastes = [keys[first]]
        if rng.random() < 0.6:  # a second taste, usually in another category
            others = [k for k in keys if k != keys[first] and (k[0] != keys[first][0] or rng.random() < 0.2)]
            tastes.append(others[int(rng.integers(len(others)))])
        tier = tiers[int(rng.integers(3))]
        length = int(np.clip(rng.geometric(1 / 14) + min_len - 1, min_len, max_len))
        pos = {k: int(rng.integers(len(clusters[k]))) for k in tastes}
        seen: set[int] = set()
        t0 = int(rng.integers(0, 1000))
        for step in range(length):
            item = None
            for _ in range(20):
                if rng.random() < noise:
                    cand = int(rng.choice(n_items, p=pop))
                else:
                    drift = step / max(1, length - 1)
                    k = tastes[1] if len(tastes) == 2 and rng.random() < 0.1 + 0.8 * drift else tastes[0]
                    members = clusters[k]
                    if rng.random() < 0.7:  # the next items of the series
                        pos[k] = (pos[k] + int(rng.integers(1, 3))) % len(members)
                        cand = members[pos[k]]
                    else:  # a popular item of the cluster, in the user's price tier when possible
                        w = np.array([pop[m] * (3.0 if items[m]["tier"] == tier else 1.0) for m in members])
                        cand = int(members[int(rng.choice(len(members), p=w / w.sum()))])
                if cand not in seen:
                    item = cand
                    break
            if item is None:
                continue
            seen.add(item)
            interactions.append({"user": f"u{u:04d}", "item": items[item]["id"], "t": t0 + step})
    return interactions, items


def time_split(interactions: list[dict], frac: float = 0.2) -> tuple[list[dict], dict[str, list[str]]]:
    """The last `frac` of each user's interactions by t (at least one, for users with 2+) are held out."""
    by_user: dict[str, list[dict]] = {}
    for x in interactions:
        by_user.setdefault(str(x["user"]), []).append(x)
    train, test = [], {}
    for u, xs in by_user.items():
        xs = sorted(xs, key=lambda x: x.get("t", 0))
        n_test = int(np.ceil(frac * len(xs))) if len(xs) >= 2 else 0
        train.extend(xs[:len(xs) - n_test])
        if n_test:
            test[u] = [str(x["item"]) for x in xs[len(xs) - n_test:]]
    return train, test

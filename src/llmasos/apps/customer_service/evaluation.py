"""Intent recognition with out-of-scope detection, measured: ours (`IntentClassifier`) next to two baselines
trained in the same run on the same embeddings, all three with thresholds chosen from the training examples
alone (leave-one-out / leave-one-intent-out). Training: the first `per_intent` examples of each intent of the
sample domain; test: `data/eval_<lang>.tsv` (hand-written, worded differently, plus out-of-scope requests).

    .venv/bin/python -m llmasos.apps.customer_service.evaluation
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmasos.apps.customer_service.domain import load_domain
from llmasos.apps.customer_service.nlu import CentroidBaseline, IntentClassifier, LogisticBaseline
from llmasos.eval.hardware import cpu_model

DATA = Path(__file__).parent / "data"
SYSTEMS = {"ours (hybrid kNN+centroid, emb+n-grams)": IntentClassifier,
           "nearest centroid (embeddings)": CentroidBaseline,
           "logistic probe (embeddings)": LogisticBaseline}


def load_test(lang: str = "en") -> list[tuple[str, str | None]]:
    rows = []
    for line in (DATA / f"eval_{lang}.tsv").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, text = line.split("\t", 1)
        rows.append((text, None if label == "oos" else label))
    return rows


def evaluate(lang: str = "en", per_intent: int = 6, limit: int | None = None, runtime: Any = None) -> dict:
    """{"n_test", "n_in_scope", "n_oos", "n_intents", "per_intent", "systems": {name: {accuracy,
    in_scope_accuracy, oos_recall, oos_precision, threshold, fit_s, predict_ms}}}."""
    domain = load_domain(lang)
    examples = domain.training_examples(per_intent=per_intent)
    test = load_test(lang)
    if limit:
        ins = [r for r in test if r[1] is not None][:limit]
        oos = [r for r in test if r[1] is None][:max(1, limit // 3)]
        test = ins + oos
    texts, gold = [t for t, _ in test], [g for _, g in test]
    out: dict = {"lang": lang, "n_test": len(test), "n_in_scope": sum(g is not None for g in gold),
                 "n_oos": sum(g is None for g in gold), "n_intents": len(examples), "per_intent": per_intent,
                 "systems": {}}
    for name, cls in SYSTEMS.items():
        t0 = time.perf_counter()
        clf = cls.fit(examples, runtime=runtime)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = [p.intent for p in clf.predict(texts)]
        predict_ms = 1000 * (time.perf_counter() - t0) / len(texts)
        ok = [p == g for p, g in zip(pred, gold, strict=True)]
        in_ok = [o for o, g in zip(ok, gold, strict=True) if g is not None]
        oos_ok = [o for o, g in zip(ok, gold, strict=True) if g is None]
        rejected = [g for p, g in zip(pred, gold, strict=True) if p is None]
        out["systems"][name] = {
            "accuracy": sum(ok) / len(ok),
            "in_scope_accuracy": sum(in_ok) / max(1, len(in_ok)),
            "oos_recall": sum(oos_ok) / max(1, len(oos_ok)),
            "oos_precision": sum(g is None for g in rejected) / max(1, len(rejected)),
            "threshold": clf.threshold, "fit_s": fit_s, "predict_ms": predict_ms,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lang", default="en", choices=["en", "zh"])
    ap.add_argument("--per-intent", type=int, default=6)
    args = ap.parse_args(argv)
    res = evaluate(args.lang, args.per_intent)
    table = Table(title=f"customer_service intents ({args.lang}): {res['n_intents']} intents x {res['per_intent']} "
                        f"examples; test {res['n_in_scope']} in-scope + {res['n_oos']} out-of-scope")
    for col in ("system", "accuracy", "in-scope acc.", "OOS recall", "OOS precision", "threshold", "fit s",
                "ms/utt."):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, m in res["systems"].items():
        table.add_row(name, f"{m['accuracy']:.3f}", f"{m['in_scope_accuracy']:.3f}", f"{m['oos_recall']:.3f}",
                      f"{m['oos_precision']:.3f}", f"{m['threshold']:.3f}", f"{m['fit_s']:.1f}",
                      f"{m['predict_ms']:.1f}")
    console = Console(width=150)
    console.print(table)
    console.print(f"CPU: {cpu_model()}")


if __name__ == "__main__":
    main()

"""The four bundled apps' evaluations, each with its baselines measured in the same run, one table each:
customer service (intent accuracy, out-of-scope recall; English and Chinese), knowledge QA (hit@1, hit@5, MRR), recommendation
(NDCG@10, Recall@10), writer (correction precision, recall, BLEU).

    .venv/bin/python benchmarks/bench_apps.py                 # all four
    .venv/bin/python benchmarks/bench_apps.py --only writer   # one of them
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from rich.console import Console

from llmasos.apps.customer_service.evaluation import main as customer_service
from llmasos.apps.knowledge_qa.evaluation import main as knowledge_qa
from llmasos.apps.recommender.evaluation import main as recommender
from llmasos.apps.writer.evaluation import main as writer


def customer_service_both() -> None:
    customer_service([])
    customer_service(["--lang", "zh"])


APPS: dict[str, Callable[[], None]] = {"customer_service": customer_service_both, "knowledge_qa": knowledge_qa,
                                       "recommender": recommender, "writer": lambda: writer([])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(APPS), action="append", help="run only these (repeatable)")
    args = ap.parse_args()
    console = Console()
    for name in args.only or list(APPS):
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        argv, sys.argv = sys.argv, [name]  # each evaluation parses its own (default) options
        try:
            APPS[name]()
        finally:
            sys.argv = argv
        console.print(f"[dim]{name}: {time.perf_counter() - t0:.0f} s[/dim]")


if __name__ == "__main__":
    main()

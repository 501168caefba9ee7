"""llama.cpp as a baseline through its own benchmark tools, on the very GGUF files our engine loads.

`llama-batched-bench` (built from llama.cpp's sources; see README.md) times, for each number of parallel
sequences, a prompt phase and `ntg` decode steps: `S_TG t/s` is generated tokens per second of the decode phase,
the same quantity our runs report as decode tok/s (tokens after the first, over the time from the last first
token to the last token). llama-cpp-python has no batched multi-sequence API, hence the binary.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

TOOL = "llama-batched-bench"


def find_tool(bin_dir: Path | None) -> Path | None:
    """The llama-batched-bench binary in `bin_dir` (or on PATH), or None."""
    if bin_dir is not None:
        p = Path(bin_dir) / TOOL
        return p if p.is_file() else None
    found = shutil.which(TOOL)
    return Path(found) if found else None


def batched_bench(tool: Path, gguf: Path, threads: int, prompt: int, gen: int, parallel: list[int],
                  timeout: float = 1800) -> dict[int, dict[str, float]]:
    """{parallel sequences: {"pp_tok_s", "tg_tok_s", ...}} from one llama-batched-bench run."""
    ctx = max(parallel) * (prompt + gen) + 64
    cmd = [str(tool), "-m", str(gguf), "-t", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", str(prompt), "-ntg", str(gen), "-npl", ",".join(map(str, parallel))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={"LD_LIBRARY_PATH": str(tool.parent), "PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        raise RuntimeError(f"{tool.name} failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")
    return parse_table(r.stdout + "\n" + r.stderr)


def parse_table(text: str) -> dict[int, dict[str, float]]:
    """Rows of llama-batched-bench's markdown table, keyed by B (parallel sequences)."""
    header: list[str] | None = None
    rows: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6:
            continue
        if "S_TG t/s" in cells:
            header = cells
            continue
        if header is None or not re.fullmatch(r"-?\d+(\.\d+)?", cells[0]):
            continue
        rec = dict(zip(header, cells, strict=False))
        rows[int(rec["B"])] = {"pp_tok_s": float(rec["S_PP t/s"]), "tg_tok_s": float(rec["S_TG t/s"]),
                               "t_pp_s": float(rec["T_PP s"]), "t_tg_s": float(rec["T_TG s"])}
    if not rows:
        raise RuntimeError(f"no results table in llama-batched-bench output: {text[-800:]}")
    return rows


def version(tool: Path) -> str:
    try:
        r = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60,
                           env={"LD_LIBRARY_PATH": str(tool.parent), "PATH": "/usr/bin:/bin"})
        m = re.search(r"version: (\S+ \([0-9a-f]+\))", r.stdout + r.stderr)
        return m.group(1) if m else (r.stdout + r.stderr).strip().splitlines()[0][:80]
    except Exception as exc:  # a version string is informational only
        return f"unknown ({exc})"

"""Shared output of the benchmark scripts: a markdown section of a report and PNGs beside it.

The report is ``$FEDRL_BENCH_DOC``, by default ``bench-results/benchmarks.md`` (untracked), with its
figures in ``img/`` beside it; the project's published figures are refreshed with
``FEDRL_BENCH_DOC=docs/benchmarks.md``, on purpose.
"""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = Path(os.environ.get("FEDRL_BENCH_DOC") or ROOT / "bench-results" / "benchmarks.md").resolve()
IMG = DOC.parent / "img"


def machine() -> str:
    """One line describing where the figures were measured."""
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d}"
    )


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote section {name!r} of {DOC}")


def save_figure(fig, name: str, title: str) -> str:
    """Lay out ``fig``, write it to ``IMG/name`` and return its markdown image line."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    return f"![{title}](img/{name})"


def run_parallel(worker, jobs: list[dict], workers: int = 2) -> list[dict]:
    """``worker(job)`` for every job, ``workers`` processes at a time, printing each result (but
    its ``curve``) as it ends."""
    import multiprocessing as mp

    out = []
    with mp.get_context("spawn").Pool(workers) as pool:
        for r in pool.imap_unordered(worker, jobs):
            print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "curve"}, flush=True)
            out.append(r)
    return out

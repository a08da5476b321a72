"""The whole book: seconds per chapter from clean caches and from warm caches, written to RESULTS.md.

    .venv/bin/python benchmarks/bench_book.py [--threads N] [--no-write]

Runs every notebook of ``notebooks/`` in order with ``python -m mtmg.notebook`` (papermill, profile
``default``), exactly as ``make book`` does, in two passes:

1. clean: fresh, empty ``MTMG_RUNS`` and ``MTMG_CACHE`` folders (a temporary directory), so nothing
   computed earlier on this machine is reused: what a first reader of a fresh clone waits for (the
   shipped data, including MiniCLIP's weights, are part of the clone);
2. warm: the same folders again, now filled by pass 1: what a second run costs.

Each chapter's time is the wall time of its command (kernel start-up included). The load average is
read before and after every chapter. The table, with the date, machine and load, replaces the section
between the ``bench_book`` markers of ``benchmarks/RESULTS.md`` (``--no-write`` only prints it). The
executed copies go to the temporary directory, never to ``book/executed``. Measure on an otherwise
idle machine: with a 1-minute load above the core count the figures say more about the other work.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, cpu_model, load_average

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- bench_book:start -->", "<!-- bench_book:end -->"


def run_chapter(notebook: Path, out_dir: Path, env: dict[str, str], threads: str | None) -> tuple[float, str, str]:
    """Execute one notebook; returns (seconds, load before, load after). Raises with its output on failure."""
    cmd = [sys.executable, "-m", "mtmg.notebook", str(notebook), str(out_dir / notebook.name), "--profile", "default"]
    if threads is not None:
        cmd += ["-p", "threads", threads]
    before = load_average()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{notebook.name} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, before, load_average()


def fmt(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default=None,
                        help="papermill parameter 'threads' for every chapter (default: the notebooks' own default)")
    parser.add_argument("--chapters", nargs="+", default=None, metavar="PREFIX",
                        help="only the notebooks whose names start with these prefixes, e.g. 01 02 (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md as it is")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    notebooks = [nb for nb in NOTEBOOKS if args.chapters is None or nb.name.startswith(tuple(args.chapters))]
    if not notebooks:
        parser.error(f"no notebooks in {ROOT / 'notebooks'} match {args.chapters}")
    started = datetime.datetime.now().astimezone()
    rows = []
    totals = {}
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-book-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "MTMG_RUNS": str(tmp / "runs"), "MTMG_CACHE": str(tmp / "cache"),
               "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        for name in ("clean", "warm"):
            total = 0.0
            for nb in notebooks:
                seconds, before, after = run_chapter(nb, tmp / name, env, args.threads)
                total += seconds
                rows.append((name, nb.stem, seconds, before, after))
                print(f"{name:5} {nb.stem:32} {fmt(seconds):>13}   load {before} -> {after}", flush=True)
            totals[name] = total
            print(f"{name:5} {'all chapters':32} {fmt(total):>13}", flush=True)

    threads = args.threads if args.threads is not None else "notebook default"
    lines = [
        START,
        f"Measured {started.strftime('%Y-%m-%d %H:%M %Z')} by `benchmarks/bench_book.py` on {cpu_model()} "
        f"({os.cpu_count()} logical cores), Python {platform.python_version()}, torch {torch.__version__}; "
        f"torch threads: {threads}. Load average (1/5/15 min) before and after each chapter.",
        "",
        "| pass | chapter | time | load before | load after |",
        "| --- | --- | ---: | --- | --- |",
        *[f"| {p} | {c} | {fmt(s)} | {b} | {a} |" for p, c, s, b, a in rows],
        *[f"| **{p}** | **all {len(notebooks)} chapters** | **{fmt(t)}** | | |" for p, t in totals.items()],
        "",
        "*clean*: empty run and cache folders (fresh clone after install); *warm*: the same folders again.",
        END,
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_write:
        text = args.results.read_text() if args.results.is_file() else ""
        if START in text and END in text:
            text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Whole book — `bench_book.py`\n\n" + table + "\n"
        args.results.write_text(text)
        print(f"wrote the table into {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

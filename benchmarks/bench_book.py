"""The whole book: seconds per notebook from clean caches and from warm caches, written to RESULTS.md.

    .venv/bin/python benchmarks/bench_book.py [--threads N] [--no-write] [--keep DIR]

Executes the notebooks of ``notebooks/`` (profile ``default``) exactly as ``make notebooks`` does, with
``python -m mtmg.book.notebook --into DIR ...`` (papermill; one kernel for the notebooks of one command, each
from an empty namespace). Passes, all in one temporary run and cache folder (``MTMG_RUNS``,
``MTMG_CACHE``), so nothing computed earlier on this machine is reused:

1. clean: the five chapters (01-05) in one command from empty folders, what a first reader of a fresh
   clone waits for (the shipped data, MiniCLIP's weights included, are part of the clone); then the
   exercise-solutions page (06), which runs every exercise's change, in a second command;
2. warm: the same two commands again, now reusing every run;
3. alone: each notebook in a command of its own (its own kernel, which imports the libraries again),
   warm: what opening one chapter costs once its runs exist.

Each command's wall time includes starting Python and the kernel; each notebook's time is papermill's
duration for it. The load average is read before and after every command. The table, with the date,
machine and load, replaces the section between the ``bench_book`` markers of ``benchmarks/RESULTS.md``
(``--no-write`` only prints it). Measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
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
CHAPTERS = [nb for nb in NOTEBOOKS if nb.name.startswith(("01", "02", "03", "04", "05"))]
OTHERS = [nb for nb in NOTEBOOKS if nb not in CHAPTERS]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- bench_book:start -->", "<!-- bench_book:end -->"


def run(notebooks: list[Path], out_dir: Path, env: dict[str, str], threads: str | None) -> dict:
    """Execute ``notebooks`` in one command; returns its wall time, the load before and after, and each
    notebook's papermill duration. Raises with the command's output on failure."""
    cmd = [sys.executable, "-m", "mtmg.book.notebook", "--into", str(out_dir), *map(str, notebooks),
           "--profile", "default"]
    if threads is not None:
        cmd += ["-p", "threads", threads]
    before = load_average()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{[nb.name for nb in notebooks]} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    durations = {nb.stem: json.loads((out_dir / nb.name).read_text())["metadata"]["papermill"]["duration"]
                 for nb in notebooks}
    return {"seconds": seconds, "before": before, "after": load_average(), "notebooks": durations}


def fmt(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default=None,
                        help="papermill parameter 'threads' for every notebook (default: the notebooks' own default)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md as it is")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to write the table into")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the executed copies (with papermill's per-cell durations) under DIR")
    parser.add_argument("--chapters-only", action="store_true",
                        help="leave out the exercise-solutions page (it runs every exercise's change)")
    args = parser.parse_args(argv)
    groups = [("the five chapters", CHAPTERS)] + ([] if args.chapters_only else [("exercise solutions", OTHERS)])
    started = datetime.datetime.now().astimezone()
    rows = []  # (pass, command, wall, load before, load after, {notebook: seconds})
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-book-") as tmp:
        tmp = Path(tmp)
        out = args.keep or tmp
        env = {**os.environ, "MTMG_RUNS": str(tmp / "runs"), "MTMG_CACHE": str(tmp / "cache"),
               "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        for name in ("clean", "warm"):
            for label, notebooks in groups:
                r = run(notebooks, out / name, env, args.threads)
                rows.append((name, label, r))
                print(f"{name:5} {label:24} {fmt(r['seconds']):>13}   load {r['before']} -> {r['after']}   "
                      + ", ".join(f"{k[:2]} {v:.1f} s" for k, v in r["notebooks"].items()), flush=True)
        for nb in [n for _, group in groups for n in group]:
            r = run([nb], out / "alone", env, args.threads)
            rows.append(("alone", nb.stem, r))
            print(f"alone {nb.stem:24} {fmt(r['seconds']):>13}   load {r['before']} -> {r['after']}", flush=True)

    threads = args.threads if args.threads is not None else "the notebooks' default (\"auto\")"
    lines = [
        START,
        f"Measured {started.strftime('%Y-%m-%d %H:%M %Z')} by `benchmarks/bench_book.py` on {cpu_model()} "
        f"({os.cpu_count()} logical cores), Python {platform.python_version()}, torch {torch.__version__}; "
        f"torch threads: {threads}. One row per command (`python -m mtmg.book.notebook --into ...`, as "
        "`make notebooks` runs them); its wall time includes starting Python and the kernel. Load average "
        "(1/5/15 min) before and after each command.",
        "",
        "| pass | command | wall time | per notebook (papermill) | load before | load after |",
        "| --- | --- | ---: | --- | --- | --- |",
        *[f"| {p} | {label} | **{fmt(r['seconds'])}** | "
          + ", ".join(f"{k[:2]}: {v:.1f} s" for k, v in r["notebooks"].items())
          + f" | {r['before']} | {r['after']} |" for p, label, r in rows],
        "",
        "*clean*: empty run and cache folders (a fresh clone after install); *warm*: the same folders again; "
        "*alone*: one notebook per command and kernel, warm.",
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

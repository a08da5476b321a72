"""Shared helpers of the benchmark scripts: machine description, interleaved timing, tables."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


def setup_threads(threads: int = THREADS) -> None:
    """Fix the number of intra-op threads (the reference machine has 2 cores)."""
    torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU model named in /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_header(title: str) -> str:
    """One block naming the benchmark, the machine, the software and the load before the run."""
    lines = [
        f"== {title} ==",
        f"date        {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu         {cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})",
        f"software    python {platform.python_version()}, torch {torch.__version__}",
        f"cuda        {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        f"load before {load_average()} (1/5/15 min)",
    ]
    return "\n".join(lines)


def footer() -> str:
    """The load after the run: with a load above the core count the machine was shared."""
    cores = os.cpu_count() or 1
    one = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    note = " -- above the core count: the cores were shared with other work" if one > cores else ""
    return f"load after  {load_average()} (1/5/15 min){note}"


def interleaved(runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    """Call every function once per round, in turn, and return the rate of each call (items / s).

    Each function returns how many items it processed. Alternating the contenders within a round
    spreads slow phases of a shared machine over all of them instead of one.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
    return rates


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` of a list of rates."""
    return f"{statistics.median(values):9.1f} [{min(values):.1f}-{max(values):.1f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def read_all(dataset) -> int:
    """Read every item of a map-style dataset (the sample dicts); returns the count."""
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset)


def read_raw(dataset) -> int:
    """Read every item's raw array only (``dataset.raw(i)``); returns the count."""
    for i in range(len(dataset)):
        dataset.raw(i)
    return len(dataset)

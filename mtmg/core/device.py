"""Device selection and mixed precision: fp32 on CPU, bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``"auto"`` picks CUDA when available, else the CPU. Asking for CUDA on a machine
    without it raises ``RuntimeError`` instead of failing later inside a kernel.
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"Unknown device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"Device {name!r} requested but CUDA is not available here; use --device cpu or auto.")
    return device


def autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay in fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the previous number.

    For per-sample work (decoding, views, transforms of one tile): its tensors are too small to gain
    from a second thread, and each operation that the pool splits waits for every pool thread to be
    scheduled, which on a busy machine takes milliseconds. Batch-level work stays on the full pool.
    Switching costs well under a microsecond.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _machine_ticks() -> tuple[int, int]:
    """Idle (idle + iowait) and total CPU ticks of the whole machine so far (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return values[3] + values[4], sum(values)  # guest time is already in user


def _own_ticks() -> int:
    """CPU ticks used so far by this process and by its parent, the program that drives it (papermill,
    a Jupyter server or a shell): their work does not compete with this process's computations."""
    ticks = 0
    for pid in {os.getpid(), os.getppid()}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        except (OSError, ValueError, IndexError):
            pass
    return ticks


def idle_share(before: tuple[int, int, int], after: tuple[int, int, int], cores: int) -> float | None:
    """Cores left idle by other programs between two ``(idle, total, own)`` tick readings: the machine's
    idle ticks plus those this process and its parent used, as a share of ``cores``."""
    idle, total, own = (b - a for a, b in zip(before, after))
    if total <= 0:
        return None
    return min(float(cores), cores * (idle + max(own, 0)) / total)


def idle_cores(interval: float = 0.5) -> float | None:
    """How many cores other programs left idle during ``interval`` seconds (Linux ``/proc``); None where
    that cannot be read."""
    try:
        before = (*_machine_ticks(), _own_ticks())
        time.sleep(interval)
        after = (*_machine_ticks(), _own_ticks())
    except (OSError, ValueError, IndexError):
        return None
    return idle_share(before, after, os.cpu_count() or 1)


def default_threads() -> int:
    """Torch CPU threads for this process now: every usable core when other programs leave the cores
    idle, else the number of idle cores (at least one).

    Torch's thread pool splits each operation and waits for every thread to finish its share; a thread
    whose core is busy with another process runs only when the scheduler lets it, so on a shared
    machine two threads can be several times slower than one (``benchmarks/bench_threads.py``).
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = idle_cores()
    if idle is None:
        return usable
    return max(1, min(usable, int(idle + 0.25)))

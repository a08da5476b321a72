"""Device selection, mixed precision (fp32 on CPU, bf16 autocast on CUDA) and torch CPU threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads (None: the current number), then restore the
    previous number; yields the number in use.

    Training results depend on the thread count (the pool splits reductions differently), so every stage
    runs under the number its config fixes, never one chosen from the machine's load at that moment.
    """
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield previous
        return
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ValueError(f"threads: expected a positive number of CPU threads, got {threads!r}")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the previous number.

    For per-sample work (decoding, views, transforms of one tile): its tensors are too small to gain
    from a second thread, and each operation that the pool splits waits for every pool thread to be
    scheduled, which on a busy machine takes milliseconds. Batch-level work stays on the full pool.
    Switching costs well under a microsecond.
    """
    with torch_threads(1):
        yield

"""Device selection and mixed precision: fp32 on CPU, bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib
from typing import ContextManager

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


def autocast(device: str | torch.device) -> ContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay in fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

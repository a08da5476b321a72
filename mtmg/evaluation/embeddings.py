"""Batched embedding extraction over a loader of dict samples, with an optional tensor cache file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mtmg.core import checkpoint
from mtmg.core.device import autocast


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def run_encoder(
    encoder: nn.Module,
    loader: Iterable[dict],
    key: str = "rgb",
    device: str | torch.device | None = None,
    desc: str = "embeddings",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder(batch[key])`` over the loader in eval mode: (outputs (N, D) float32 on CPU, targets).

    ``device`` defaults to the encoder's device (the encoder is not moved); CUDA runs use bf16 autocast.
    Targets are (N,) int64 labels or (N, C) float multi-hot vectors, stacked from ``batch["target"]``.
    """
    device = torch.device(device) if device is not None else module_device(encoder)
    was_training = encoder.training
    encoder.eval()
    outputs, targets = [], []
    try:
        for batch in tqdm(loader, desc=desc, leave=False):
            if key not in batch:
                raise KeyError(f"Samples have no {key!r} view (keys: {sorted(batch)}); "
                               "use key='rgb' for CLIP and key='ms' for a multispectral encoder.")
            with autocast(device):
                out = encoder(batch[key].to(device, non_blocking=True))
            outputs.append(out.float().cpu())
            targets.append(torch.as_tensor(batch["target"]))
    finally:
        encoder.train(was_training)
    if not outputs:
        raise ValueError("The loader yielded no batches.")
    return torch.cat(outputs), torch.cat(targets)


def extract_embeddings(
    encoder: nn.Module,
    loader: Iterable[dict],
    key: str = "rgb",
    device: str | torch.device | None = None,
    cache_path: str | os.PathLike | None = None,
    desc: str = "embeddings",
    cache_key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) and targets of every sample, in loader order (use an unshuffled loader).

    With ``cache_path``, a file holding ``{"key", "embeddings", "targets"}`` is reused when its key equals
    ``cache_key`` (any file is reused when ``cache_key`` is None) and written otherwise.
    """
    path = Path(cache_path) if cache_path is not None else None
    stored = checkpoint.load_cache(path) if path is not None else None  # a corrupt file is a cache miss
    if (isinstance(stored, dict) and {"embeddings", "targets"} <= set(stored)
            and (cache_key is None or stored.get("key") == cache_key)):
        return stored["embeddings"], stored["targets"]
    embeddings, targets = run_encoder(encoder, loader, key, device, desc)
    if path is not None:
        checkpoint.atomic_save({"key": cache_key or "", "embeddings": embeddings, "targets": targets}, path)
    return embeddings, targets

"""Embedding a dataset: every encoder on its view in one pass over a loader, with an optional tensor cache
file. Every stage and the probe embed their data with :func:`embed`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mtmg.core import checkpoint
from mtmg.core.device import autocast

Encoder = Callable[[torch.Tensor], torch.Tensor]


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def embed(encoders: Mapping[str, tuple[Encoder, str]], loader: Iterable[dict],
          device: str | torch.device | None = None, desc: str = "embeddings"
          ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One pass over ``loader``: ``encoder(batch[view])`` for every ``name: (encoder, view)``, modules in
    eval mode (restored after). Returns ({name: (N, D) float32 on CPU}, targets), in loader order.

    ``device`` defaults to the first encoder module's device (encoders are not moved); CUDA runs use bf16
    autocast. Targets are (N,) int64 labels or (N, C) float multi-hot vectors, stacked from ``batch["target"]``
    (None for samples without targets).
    """
    modules = [e for e, _ in encoders.values() if isinstance(e, nn.Module)]
    device = torch.device(device) if device is not None else (
        module_device(modules[0]) if modules else torch.device("cpu"))
    modes = [m.training for m in modules]
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    targets, batches = [], 0
    try:
        for m in modules:
            m.eval()
        for batch in tqdm(loader, desc=desc, leave=False):
            for name, (encoder, view) in encoders.items():
                if view not in batch:
                    raise KeyError(f"Samples have no {view!r} view (keys: {sorted(batch)}); "
                                   "use 'rgb' for CLIP and 'ms' for a multispectral encoder.")
                with autocast(device):
                    outputs[name].append(encoder(batch[view].to(device, non_blocking=True)).float().cpu())
            if "target" in batch:
                targets.append(torch.as_tensor(batch["target"]))
            batches += 1
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if not batches:
        raise ValueError("The loader yielded no batches.")
    return {name: torch.cat(out) for name, out in outputs.items()}, torch.cat(targets) if targets else None


def extract_embeddings(
    encoder: nn.Module,
    loader: Iterable[dict],
    key: str = "rgb",
    device: str | torch.device | None = None,
    cache_path: str | os.PathLike | None = None,
    desc: str = "embeddings",
    cache_key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`embed` of one encoder on view ``key``: embeddings (N, D) and targets of every sample, in
    loader order (use an unshuffled loader).

    With ``cache_path``, a file holding ``{"key", "embeddings", "targets"}`` is reused when its key equals
    ``cache_key`` (any file is reused when ``cache_key`` is None) and written otherwise.
    """
    path = Path(cache_path) if cache_path is not None else None
    stored = checkpoint.load_cache(path) if path is not None else None  # a corrupt file is a cache miss
    if (isinstance(stored, dict) and {"embeddings", "targets"} <= set(stored)
            and (cache_key is None or stored.get("key") == cache_key)):
        return stored["embeddings"], stored["targets"]
    outputs, targets = embed({key: (encoder, key)}, loader, device, desc)
    embeddings = outputs[key]
    if path is not None:
        checkpoint.atomic_save({"key": cache_key or "", "embeddings": embeddings, "targets": targets}, path)
    return embeddings, targets

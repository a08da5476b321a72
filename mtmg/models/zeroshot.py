"""Zero-shot heads from class names and prompt templates (PAINT / open_clip construction), cached on disk.

For class c: w_c = normalize(mean_t normalize(text_encoder(t.format(c)))); row i of the head is class i,
so the head order is the order of ``classnames``. The scale is exp(model.logit_scale).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mtmg.core import checkpoint
from mtmg.models.clip import RANDOM_INIT, ClipBundle, ZeroShotHead

__all__ = ["ZeroShotHead", "build_zeroshot_head", "head_cache_key", "zeroshot_head"]

_TEXT_BATCH = 256
_CACHE_FORMAT = 1


@torch.no_grad()
def build_zeroshot_head(
    bundle_or_model: ClipBundle | nn.Module,
    tokenizer: Callable | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device | None = None,
) -> ZeroShotHead:
    """Encode every (class, template) prompt and build the frozen head, in fp32.

    Templates hold the class name as ``{}`` or ``{c}``. ``tokenizer`` may be None when a ``ClipBundle`` is
    given (its tokenizer is used). ``device`` defaults to the model's device; the returned head lives there too.
    """
    if isinstance(bundle_or_model, ClipBundle):
        model, tokenizer = bundle_or_model.model, tokenizer or bundle_or_model.tokenizer
    else:
        model = bundle_or_model
    if tokenizer is None:
        raise ValueError("build_zeroshot_head needs a tokenizer when given a bare model.")
    if not classnames or not templates:
        raise ValueError(f"Need at least one class name and one template, got {len(classnames)} and {len(templates)}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    texts = [template.format(c, c=c) for c in classnames for template in templates]
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in tqdm(range(0, len(texts), _TEXT_BATCH), desc="zero-shot head", leave=False,
                          disable=len(texts) <= _TEXT_BATCH):
            tokens = tokenizer(texts[start:start + _TEXT_BATCH]).to(device)
            chunks.append(model.encode_text(tokens, normalize=True).float())
    finally:
        model.train(was_training)
    per_template = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
    weight = F.normalize(per_template.mean(dim=1), dim=-1)
    return ZeroShotHead(weight, model.logit_scale.detach().float().exp().reshape(())).to(device)


def head_cache_key(model_name: str, weights: str, dataset: str, classnames: Sequence[str],
                   templates: Sequence[str]) -> str:
    """Hex SHA-256 of everything a head depends on; any change gives a new key."""
    payload = {"format": _CACHE_FORMAT, "model": model_name, "weights": weights, "dataset": dataset,
               "classnames": list(classnames), "templates": list(templates)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def zeroshot_head(
    bundle: ClipBundle,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    dataset: str = "",
) -> ZeroShotHead:
    """``build_zeroshot_head`` with a disk cache in ``cache_dir`` (None: no cache). The head returned is
    bit for bit the same whether it was built now or read from the cache.

    Cache files are ``head-<dataset>-<key[:16]>.pt`` holding a dict of tensors plus the full key (loaded
    with ``weights_only=True``); the key hashes model name, weights id, dataset, class names and templates.
    Models initialised at random in memory are never cached (their weights id does not identify the weights;
    the stages load a random initialisation from a file instead, :func:`mtmg.models.clip.random_init_file`). A corrupt
    cache file is a cache miss: a warning names it, and the head is built and the file rewritten.
    """
    if cache_dir is None or bundle.weights == RANDOM_INIT:
        return _as_loaded(build_zeroshot_head(bundle, None, classnames, templates))
    key = head_cache_key(bundle.model_name, bundle.weights, dataset, classnames, templates)
    path = Path(cache_dir) / f"head-{_slug(dataset) or 'any'}-{key[:16]}.pt"
    device = next(bundle.model.parameters()).device
    stored = checkpoint.load_cache(path, map_location=device)
    if _valid_head(stored, key, len(classnames)):
        return ZeroShotHead(stored["weight"], stored["logit_scale"])
    head = build_zeroshot_head(bundle, None, classnames, templates)
    checkpoint.atomic_save({"key": key, "weight": head.weight.cpu(), "logit_scale": head.logit_scale.cpu(),
                            "model": bundle.model_name, "weights": bundle.weights, "dataset": dataset,
                            "classnames": list(classnames), "templates": list(templates)}, path)
    return _as_loaded(head)


def _as_loaded(head: ZeroShotHead) -> ZeroShotHead:
    """The head as a later load of its cache file returns it. :class:`ZeroShotHead` normalises its weight,
    and normalising unit rows again can move their last bit, so the head built now and the head read from
    the cache would otherwise differ by rounding, and runs with and without a cached head would train apart."""
    return ZeroShotHead(head.weight, head.logit_scale)


def _valid_head(stored: object, key: str, num_classes: int) -> bool:
    """Whether a loaded cache file is a head for ``key`` (anything else is a cache miss)."""
    return (isinstance(stored, dict) and stored.get("key") == key
            and isinstance(stored.get("weight"), torch.Tensor) and stored["weight"].ndim == 2
            and stored["weight"].shape[0] == num_classes and isinstance(stored.get("logit_scale"), torch.Tensor))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)

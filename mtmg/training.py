"""The training loop both stages share: warm-up + cosine schedule, gradient clipping, autocast,
progress bar, CSV log, and atomic checkpoints from which an interrupted run resumes bit-exactly.

Reproducibility does not depend on data-loader workers: the sampler yields ``(index, seed)`` pairs,
a permutation fixed by ``(seed, epoch)``, and every item is loaded and augmented under its own seed
(:class:`SeededDataset`). Resuming therefore only needs the step count, the model, optimiser and
scheduler states, and the global generator states (dropout, drop-path).
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mtmg import checkpoint
from mtmg.config import TrainConfig
from mtmg.device import autocast

LossFn = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.csv"


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor of step ``step`` (0-based): linear warm-up to 1, then cosine decay to 0 (as PAINT)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / decay)))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index`` in epoch ``epoch`` (the same whatever the batch or worker)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochSampler(Sampler):
    """A fixed permutation per ``(seed, epoch)``, from position ``start``, yielding ``(index, item_seed)``."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for idx in order[self.start:]:
            yield idx, sample_seed(self.seed, self.epoch, idx)

    def __len__(self) -> int:
        return max(0, self.n - self.start)


class SeededDataset(Dataset):
    """Loads ``base[index]`` and applies ``augment`` with the torch generator seeded by the item's seed.

    Items get an ``"index"`` entry (position in ``base``). Without ``augment`` and without random
    transforms in ``base``, the seed has no effect.
    """

    def __init__(self, base: Dataset, augment: Callable[[dict], dict] | None = None):
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            item = dict(self.base[index])
            if self.augment is not None:
                item = self.augment(item)
        item["index"] = index
        return item


class InMemoryDataset(Dataset):
    """All items of ``base`` (only ``keys``) loaded once; for small datasets with deterministic transforms."""

    def __init__(self, base: Dataset, keys: tuple[str, ...] = ("rgb", "ms", "target", "id"), desc: str = "load"):
        self.items = []
        for i in tqdm(range(len(base)), desc=desc, leave=False):
            item = base[i]
            self.items.append({k: item[k] for k in keys if k in item})
        for attr in ("classes", "multilabel", "prompt_key", "classnames", "templates"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: steps in total, the step it resumed from, and the files it wrote."""

    steps: int
    resumed_from: int
    checkpoint: Path
    log: Path
    seconds: float


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Optimiser steps in one epoch over ``n`` items."""
    return n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)


def total_steps(n: int, cfg: TrainConfig) -> int:
    """Optimiser steps of the whole run (``max_steps`` caps it)."""
    total = cfg.epochs * steps_per_epoch(n, cfg)
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _meta(cfg: TrainConfig, n: int) -> dict[str, Any]:
    return {"n": n, "batch_size": cfg.batch_size, "seed": cfg.seed, "epochs": cfg.epochs,
            "max_steps": -1 if cfg.max_steps is None else cfg.max_steps, "drop_last": cfg.drop_last,
            "lr": cfg.lr, "warmup_steps": cfg.warmup_steps}


def _restore(path: Path, module: nn.Module, opt: torch.optim.Optimizer, sched: Any, meta: dict) -> int:
    state = checkpoint.load(path)
    if state["meta"] != meta:
        diff = {k: (state["meta"].get(k), v) for k, v in meta.items() if state["meta"].get(k) != v}
        raise ValueError(f"{path}: checkpoint was written by a run with other settings {diff} "
                         "(saved, now); resume with the same config or start without --resume")
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    checkpoint.set_rng_state(state["rng"])
    return int(state["step"])


def _reopen_log(path: Path, start: int) -> tuple[Any, csv.DictWriter | None, float]:
    """Open the CSV log for appending after step ``start``: rows of later steps (written after the last
    checkpoint of an interrupted run) are dropped atomically. Returns (file, writer, seconds so far)."""
    rows: list[dict[str, str]] = []
    if start > 0 and path.is_file():
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) <= start]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        if rows:
            _writer(f, list(rows[0])).writerows(rows)
    os.replace(tmp, path)
    log = path.open("a", newline="")
    writer = csv.DictWriter(log, fieldnames=list(rows[0]), extrasaction="ignore") if rows else None
    return log, writer, float(rows[-1]["seconds"]) if rows else 0.0


def fit(module: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path, *,
        device: torch.device | str = "cpu", resume: bool = False,
        augment: Callable[[dict], dict] | None = None, desc: str = "train") -> FitResult:
    """Train the trainable parameters of ``module`` on ``dataset`` with ``loss_fn(model, batch)``.

    ``loss_fn`` returns the loss and extra numbers to log; ``model`` is ``module`` or its compiled
    form. ``out_dir`` receives ``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps and at the end)
    and ``train_log.csv``. With ``resume`` the run continues from ``checkpoint.pt`` if present.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    ckpt_path, log_path = out_dir / CHECKPOINT, out_dir / LOG
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{desc}: the training dataset is empty; check the dataset root and split")
    spe, total = steps_per_epoch(n, cfg), total_steps(n, cfg)
    if spe == 0:
        raise ValueError(f"{desc}: {n} items give no full batch of {cfg.batch_size}; lower batch_size or drop_last")
    meta = _meta(cfg, n)

    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the module has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total))

    start = 0
    if resume and ckpt_path.is_file():
        start = _restore(ckpt_path, module, opt, sched, meta)
    else:
        if resume:
            tqdm.write(f"{desc}: no checkpoint in {out_dir}; starting from step 0")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    model = torch.compile(module) if cfg.compile else module
    wrapped = SeededDataset(dataset, augment)

    fields = ["step", "epoch", "lr", "loss", "grad_norm", "seconds"]
    log, writer, elapsed = _reopen_log(log_path, start)
    t0 = time.perf_counter()
    step = start
    pbar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
    try:
        while step < total:
            epoch, within = divmod(step, spe)
            loader = DataLoader(wrapped, batch_size=cfg.batch_size, drop_last=cfg.drop_last,
                                sampler=EpochSampler(n, cfg.seed, epoch, within * cfg.batch_size),
                                num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
            for batch in loader:
                batch = _to_device(batch, device)
                lr = sched.get_last_lr()[0]
                with autocast(device):
                    loss, extra = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}; lower the learning "
                                             "rate or check the inputs")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
                opt.step()
                sched.step()
                step += 1
                row = {"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(),
                       "grad_norm": float(grad_norm), "seconds": round(elapsed + time.perf_counter() - t0, 3), **extra}
                if writer is None:
                    writer = _writer(log, fields + [k for k in row if k not in fields])
                writer.writerow(row)
                log.flush()
                pbar.update(1)
                pbar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint.atomic_save({"model": module.state_dict(), "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "step": step, "meta": meta,
                                            "rng": checkpoint.rng_state()}, ckpt_path)
                if step >= total:
                    break
    finally:
        pbar.close()
        log.close()
    return FitResult(steps=total, resumed_from=start, checkpoint=ckpt_path, log=log_path,
                     seconds=time.perf_counter() - t0)


def _writer(f: Any, fields: list[str]) -> csv.DictWriter:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    return w

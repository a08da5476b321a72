"""The training loop both stages share: warm-up + cosine schedule, gradient clipping, autocast,
progress bar, CSV log, and atomic checkpoints from which an interrupted run resumes bit-exactly.

Reproducibility does not depend on data-loader workers: the sampler yields ``(index, seed)`` pairs,
a permutation fixed by ``(seed, epoch)``, and every item is loaded and augmented under its own seed
(:class:`SeededDataset`). Resuming therefore only needs the step count, the model, optimiser and
scheduler states, and the global generator states (dropout, drop-path). The checkpoint written after
the last step holds no optimiser or scheduler state (for AdamW, twice the model's size): resuming a
finished run only restores the weights.

Under ``torchrun`` (a process group initialised, see :func:`fit`) the same loop runs data-parallel:
every rank takes its slice of each global batch and DistributedDataParallel averages the gradients.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mtmg.core import checkpoint
from mtmg.core.config import TrainConfig, to_dict
from mtmg.core.device import autocast, single_thread
from mtmg.core.errors import UserError

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
    """A fixed permutation per ``(seed, epoch)`` (without ``shuffle``: the dataset order in every epoch),
    from position ``start``, yielding ``(index, item_seed)``."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True):
        self.n, self.seed, self.epoch, self.start, self.shuffle = n, seed, epoch, start, shuffle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        for idx in order[self.start:]:
            yield idx, sample_seed(self.seed, self.epoch, idx)

    def __len__(self) -> int:
        return max(0, self.n - self.start)


class RankBatches(Sampler):
    """This rank's part of each global batch of ``batch_size`` keys of ``sampler``.

    A global batch is split into ``world`` contiguous slices whose sizes differ by at most one (only the
    last, incomplete batch of an epoch can be uneven); with ``world == 1`` the slice is the whole batch.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, rank: int = 0, world: int = 1):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = []
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.batch_size:
                yield self._slice(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._slice(batch)

    def _slice(self, batch: list) -> list:
        return batch[len(batch) * self.rank // self.world:len(batch) * (self.rank + 1) // self.world]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main() -> bool:
    """Whether this process writes outputs: rank 0, or the only process."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the other ranks, which then reuse what it cached on disk."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _global_mean(values: dict[str, float], share: float, device: torch.device) -> dict[str, float]:
    """Means over the global batch of per-rank means; ``share`` is this rank's fraction of the batch."""
    if not dist.is_initialized():
        return values
    t = torch.tensor([v * share for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


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
            # the CPU generator only: torch.manual_seed would also queue a CUDA seeding call (with its
            # stack trace) per item on a machine where CUDA is not initialised
            torch.default_generator.manual_seed(seed)
            item = dict(self.base[index])
            if self.augment is not None:
                item = self.augment(item)
        item["index"] = index
        return item

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """The items of one batch, loaded and augmented with one torch thread (per-sample work)."""
        with single_thread():
            return [self[key] for key in keys]


class InMemoryDataset(Dataset):
    """All items of ``base`` (only ``keys``) loaded once; for small datasets with deterministic transforms."""

    def __init__(self, base: Dataset, keys: tuple[str, ...] = ("rgb", "ms", "target", "id"), desc: str = "load"):
        self.items = []
        with single_thread():
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


def maybe_in_memory(dataset: Dataset, enabled: bool, keys: tuple[str, ...], desc: str) -> Dataset:
    """``dataset`` loaded once into memory (``keys`` only) when ``enabled``; for deterministic transforms."""
    return InMemoryDataset(dataset, keys, desc) if enabled else dataset


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


RESUME_FREE = ("checkpoint_every", "num_workers", "compile")
"""Training settings that do not change the result, so a resumed run may change them."""


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (lists stay values)."""
    if not isinstance(data, Mapping):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}." if isinstance(v, Mapping) else f"{prefix}{k}"))
    return out


def resume_meta(cfg: TrainConfig, n: int, identity: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Everything a resumed run must share with the checkpoint it continues, as dotted keys: the number of
    items, every training setting that shapes the result (optimiser, schedule, loop) and ``identity``
    (the stage's other settings, data manifests, weights)."""
    train = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE}
    meta = flatten({"n": n, "train": train, **(identity or {})})
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()}


class ResumeMismatchError(UserError, ValueError):
    """A checkpoint to resume from that was written with other settings."""


def _compare(path: Path, saved: Mapping[str, str], meta: Mapping[str, str], skip: Sequence[str] = ()) -> None:
    keys = sorted((set(saved) | set(meta)) - set(skip))
    diff = [f"{k}: {saved.get(k, '(absent)')} (checkpoint) vs {meta.get(k, '(absent)')} (now)"
            for k in keys if saved.get(k) != meta.get(k)]
    if diff:
        raise ResumeMismatchError(f"{path}: the checkpoint was written with other settings: " + "; ".join(diff[:12])
                                  + "; resume with the same settings, or start again without --resume")


def check_resume(out_dir: str | Path, cfg: TrainConfig, identity: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume from ``out_dir``'s checkpoint if it was written with other settings (every key of
    :func:`resume_meta` but the number of items, which needs the data): a stage calls this before it writes
    anything. No checkpoint: nothing to check."""
    path = Path(out_dir) / CHECKPOINT
    if path.is_file():
        _compare(path, checkpoint.load(path).get("meta", {}), resume_meta(cfg, 0, identity), skip=("n",))


def _restore(path: Path, module: nn.Module, opt: torch.optim.Optimizer, sched: Any, meta: dict) -> int:
    state = checkpoint.load(path)
    _compare(path, state.get("meta", {}), meta)
    module.load_state_dict(state["model"])
    if "optimizer" in state:  # absent from the checkpoint of a finished run (fit then takes no step)
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
    with checkpoint.atomic_open(path, "w", newline="") as f:
        if rows:
            _writer(f, list(rows[0])).writerows(rows)
    log = path.open("a", newline="")
    writer = csv.DictWriter(log, fieldnames=list(rows[0]), extrasaction="ignore") if rows else None
    return log, writer, float(rows[-1]["seconds"]) if rows else 0.0


def fit(module: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path, *,
        device: torch.device | str = "cpu", resume: bool = False,
        augment: Callable[[dict], dict] | None = None, desc: str = "train",
        identity: Mapping[str, Any] | None = None) -> FitResult:
    """Train the trainable parameters of ``module`` on ``dataset`` with ``loss_fn(model, batch)``.

    ``loss_fn`` returns the loss and extra numbers to log; ``model`` is ``module`` or its compiled
    form. ``out_dir`` receives ``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps and at the end)
    and ``train_log.csv``. With ``resume`` the run continues from ``checkpoint.pt`` if present, and only
    if it was written with the same :func:`resume_meta` (training settings and ``identity``); otherwise
    it is refused with the differing keys listed.

    With an initialised process group (``torchrun``, see ``mtmg.cli``), ``model`` is ``module`` wrapped
    in DistributedDataParallel and each rank takes a contiguous slice of every global batch of the
    single-process order, so the global batch stays ``cfg.batch_size`` (which the world size must
    divide). ``loss_fn`` must return a mean over the items of its batch: each rank's loss is weighted by
    its share of the global batch, so the averaged gradient is the one of the global mean loss, also
    for the last, incomplete batch of an epoch (which needs at least one item per rank, else
    ``drop_last``). Logged numbers are global means. Only rank 0 writes the log and checkpoints; every
    rank resumes from the same checkpoint (random generators included, as rank 0 saved them: dropout
    masks on other ranks then differ from an uninterrupted run).
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
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"{desc}: batch_size {cfg.batch_size} is not divisible by the {world} processes")
    if not cfg.drop_last and 0 < n % cfg.batch_size < world:
        raise ValueError(f"{desc}: the last batch of each epoch has {n % cfg.batch_size} items for {world} "
                         "processes; set drop_last: true or change batch_size")
    main = rank == 0
    meta = resume_meta(cfg, n, identity)

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
        if resume and main:
            tqdm.write(f"{desc}: no checkpoint in {out_dir}; starting from step 0")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    model = DistributedDataParallel(module) if world > 1 else module
    model = torch.compile(model) if cfg.compile else model
    wrapped = SeededDataset(dataset, augment)

    fields = ["step", "epoch", "lr", "loss", "grad_norm", "seconds"]
    log, writer, elapsed = _reopen_log(log_path, start) if main else (None, None, 0.0)
    t0 = time.perf_counter()
    step = start
    pbar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, disable=not main)
    try:
        while step < total:
            epoch, within = divmod(step, spe)
            order = EpochSampler(n, cfg.seed, epoch, within * cfg.batch_size, cfg.shuffle)
            batches = RankBatches(order, cfg.batch_size, cfg.drop_last, rank, world)
            loader = DataLoader(wrapped, batch_sampler=batches, num_workers=cfg.num_workers,
                                pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
            for batch in loader:
                share = len(batch["index"]) / min(cfg.batch_size, n - (step % spe) * cfg.batch_size)
                batch = _to_device(batch, device)
                lr = sched.get_last_lr()[0]
                with autocast(device):
                    loss, extra = loss_fn(model, batch)
                stats = _global_mean({"loss": loss.item(), **extra}, share, device)
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(f"{desc}: loss is {stats['loss']} at step {step}; lower the learning "
                                             "rate or check the inputs")
                opt.zero_grad(set_to_none=True)
                (loss * (world * share)).backward()  # DDP averages over ranks: the gradient of the global mean
                grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
                opt.step()
                sched.step()
                step += 1
                pbar.update(1)
                pbar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}")
                if main:
                    row = {"step": step, "epoch": epoch, "lr": lr, **stats, "grad_norm": float(grad_norm),
                           "seconds": round(elapsed + time.perf_counter() - t0, 3)}
                    if writer is None:
                        writer = _writer(log, fields + [k for k in row if k not in fields])
                    writer.writerow(row)
                    log.flush()
                    if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                        state = {"model": module.state_dict(), "step": step, "meta": meta,
                                 "rng": checkpoint.rng_state()}
                        if step < total:  # the last checkpoint needs no optimiser: no step follows it
                            state.update(optimizer=opt.state_dict(), scheduler=sched.state_dict())
                        checkpoint.atomic_save(state, ckpt_path)
                if step >= total:
                    break
    finally:
        pbar.close()
        if log is not None:
            log.close()
    barrier()  # the final checkpoint is written before any rank goes on
    return FitResult(steps=total, resumed_from=start, checkpoint=ckpt_path, log=log_path,
                     seconds=time.perf_counter() - t0)


def read_log(path: Path) -> Any:
    """The CSV log :func:`fit` writes as a DataFrame, or None when the file is absent."""
    return pd.read_csv(path) if Path(path).is_file() else None


def _writer(f: Any, fields: list[str]) -> csv.DictWriter:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    return w

"""One torch thread against two: the per-sample data path, fine-tuning steps and alignment steps.

    .venv/bin/python benchmarks/bench_threads.py [--rounds 3] [--steps 24] [--threads 1 2]

A. Data path: EuroSAT-MS samples per second through ``get_dataset("eurosat_ms", ...)`` (200 shipped
   tiles; checked read, band reorder, MS view, RGB composite) one by one and as DataLoader batches of
   32, and, as the reference that shows the cause, the former MS view written with torch operations
   (``torch.from_numpy(x).float() / 10000`` then ``clamp_``) on the same raw arrays.
B. Fine-tuning (stage 1 of the default profile): ``mtmg.method.patching.finetune`` with
   ``configs/default/patch.yaml`` (batch 32, D4 augmentation, tiles in memory) on the shipped train split;
   MiniCLIP-64 at random initialisation (the speed of a step does not depend on the weight values).
C. Alignment (stage 2): ``mtmg.method.alignment.align`` with ``configs/default/align.yaml`` (13-band ViT student,
   batch 32, teacher-embedding cache, D4) and the same MiniCLIP image tower as teacher.

B and C run ``--steps`` optimiser steps per run; seconds per step come from the ``seconds`` column of
the training log that ``mtmg.method.training.fit`` writes, the first 4 steps (warm-up of the allocator and the
thread pool) left out. Every round runs each thread setting once, alternating, and prints the load
average before and after: on a machine shared with other work, read the ratios of the same round.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, footer, load_average, machine_header, table
from torch.utils.data import DataLoader

from mtmg.core.config import AlignConfig, PatchConfig, load_config
from mtmg.data import prompts
from mtmg.data.datasets import get_dataset
from mtmg.method.alignment import align
from mtmg.method.miniclip import MODEL_CONFIG_DIR, MODEL_NAME
from mtmg.method.patching import finetune
from mtmg.method.training import LOG, InMemoryDataset
from mtmg.models.clip import load_clip, register_model_config
from mtmg.models.student import build_student
from mtmg.models.zeroshot import build_zeroshot_head

EUROSAT = ROOT / "data" / "eurosat_ms_sample"
CPU = torch.device("cpu")
SKIP = 4


def torch_ms_view(array13: np.ndarray) -> torch.Tensor:
    """The MS view as the library computed it before: torch operations on one tile."""
    return (torch.from_numpy(array13.astype(np.float32)) / 10000.0).clamp_(0.0, 1.0)


def data_rates(dataset, raws: list[np.ndarray]) -> dict[str, float]:
    """Samples per second of each per-sample path, at the current number of threads."""
    rates = {}
    t = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    rates["dataset[i], one by one"] = len(dataset) / (time.perf_counter() - t)
    t = time.perf_counter()
    n = sum(len(b["target"]) for b in DataLoader(dataset, batch_size=32))
    rates["DataLoader, batch 32"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for raw in raws:
        torch_ms_view(raw)
    rates["MS view as torch ops (former)"] = len(raws) / (time.perf_counter() - t)
    return rates


def step_seconds(log: Path) -> list[float]:
    """Seconds of each optimiser step after the first ``SKIP``, from fit's log."""
    with log.open(newline="") as f:
        ends = [float(row["seconds"]) for row in csv.DictReader(f)]
    return [b - a for a, b in zip(ends[SKIP - 1:], ends[SKIP:])]


def build(steps: int):
    """Default-profile configs (with ``max_steps``), MiniCLIP at random weights, head, in-memory tiles."""
    register_model_config(MODEL_CONFIG_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bundle = load_clip(MODEL_NAME, None, CPU)
    patch_cfg = load_config(ROOT / "configs" / "default" / "patch.yaml", PatchConfig)
    align_cfg = load_config(ROOT / "configs" / "default" / "align.yaml", AlignConfig)
    patch_cfg = dataclasses.replace(patch_cfg, train=dataclasses.replace(
        patch_cfg.train, max_steps=steps, checkpoint_every=0))
    align_cfg = dataclasses.replace(align_cfg, train=dataclasses.replace(
        align_cfg.train, max_steps=steps, checkpoint_every=0))
    head = build_zeroshot_head(bundle, None, prompts.classnames("eurosat"), prompts.templates("eurosat"))
    train = get_dataset("eurosat_ms", EUROSAT, "train", rgb_transform=bundle.preprocess_val)
    data = InMemoryDataset(train, ("rgb", "ms", "target"), desc="tiles")
    student = build_student(align_cfg.student, head.weight.shape[1])
    return bundle, head, patch_cfg, align_cfg, data, student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each setting (default 3)")
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps per training run (default 24)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="settings to compare (default 1 2)")
    args = parser.parse_args(argv)
    if args.steps <= SKIP + 1:
        parser.error(f"--steps must be more than {SKIP + 1}")
    torch.set_num_threads(args.threads[0])
    print(machine_header("bench_threads: 1 vs 2 torch threads"), flush=True)
    bundle, head, patch_cfg, align_cfg, data, student0 = build(args.steps)
    visual0 = copy.deepcopy(bundle.model.visual.state_dict())
    dataset = get_dataset("eurosat_ms", EUROSAT, "all")
    raws = [dataset.raw(i)[0] for i in range(len(dataset))]

    rates: dict[tuple[str, int], list[float]] = {}
    steps: dict[tuple[str, int], list[float]] = {}
    rows_rounds = []
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-threads-") as tmp:
        for r in range(args.rounds):
            for n in args.threads:
                torch.set_num_threads(n)
                before = load_average().split()[0]
                for name, rate in data_rates(dataset, raws).items():
                    rates.setdefault((name, n), []).append(rate)
                bundle.model.visual.load_state_dict(visual0)
                out = Path(tmp) / f"patch-{r}-{n}"
                finetune(bundle, head, False, data, patch_cfg, out, device=CPU)
                steps.setdefault(("fine-tuning (patch)", n), []).extend(step_seconds(out / "finetune" / LOG))
                out = Path(tmp) / f"align-{r}-{n}"
                align(bundle.model.visual, copy.deepcopy(student0), head, False, data, align_cfg, out, device=CPU)
                steps.setdefault(("alignment", n), []).extend(step_seconds(out / "train" / LOG))
                rows_rounds.append((r + 1, n, before, load_average().split()[0]))
                print(f"  round {r + 1}, {n} thread(s): load {before} -> {load_average().split()[0]}", flush=True)

    base = args.threads[0]
    print(f"\nA. EuroSAT-MS data path, {len(dataset)} tiles; samples/s, median [range] over {args.rounds} rounds")
    names = list(dict.fromkeys(k[0] for k in rates))
    rows = []
    for name in names:
        cells = [f"{statistics.median(rates[name, n]):.0f} [{min(rates[name, n]):.0f}-{max(rates[name, n]):.0f}]"
                 for n in args.threads]
        ratios = [f"{statistics.median(rates[name, n]) / statistics.median(rates[name, base]):.2f}"
                  for n in args.threads[1:]]
        rows.append([name, *cells, *ratios])
    header = ["path", *[f"{n} thr" for n in args.threads], *[f"{n}/{base} rate" for n in args.threads[1:]]]
    print(table(header, rows))
    print(f"\nB/C. seconds per optimiser step (batch {patch_cfg.train.batch_size}), median [range] over "
          f"{args.rounds} rounds x {args.steps - SKIP} steps")
    rows = []
    for name in ("fine-tuning (patch)", "alignment"):
        med = {n: statistics.median(steps[name, n]) for n in args.threads}
        cells = [f"{med[n]:.3f} [{min(steps[name, n]):.3f}-{max(steps[name, n]):.3f}]" for n in args.threads]
        rows.append([name, *cells, *[f"{med[base] / med[n]:.2f}x" for n in args.threads[1:]]])
    print(table(["step", *[f"{n} thr s/step" for n in args.threads],
                 *[f"speed-up {n} vs {base}" for n in args.threads[1:]]], rows))
    print("\nload (1 min) per run:")
    print(table(["round", "threads", "before", "after"], rows_rounds))
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

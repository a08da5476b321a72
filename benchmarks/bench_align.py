"""Alignment epoch time with the teacher-embedding cache against recomputing the teacher every step.

    .venv/bin/python benchmarks/bench_align.py [--size 64] [--samples 48] [--batch 16] [--epochs 2] [--rounds 2]

Runs ``mtmg.method.alignment.align`` itself (``AlignConfig.teacher_cache`` true or false, ``augment: none``
as in the paper profile) with the paper's architectures at random weights and a reduced input size:
teacher = open_clip ViT-B-32 image tower (``force_image_size=--size``, QuickGELU as in the OpenAI
weights of the paper), student = timm
``vit_small_patch16_224`` with 13 bands (``img_size=--size``, drop-path 0.2) built by
``mtmg.models.student.build_student``. Data: the first ``--samples`` tiles of the shipped EuroSAT-MS train
split, held in memory (RGB through CLIP preprocessing at ``--size``, MS resized to ``--size``).

Per-epoch times come from the training log that ``mtmg.method.training.fit`` writes (the first epoch, which
holds the warm-up, is left out when there are more). The one-off cost of the cache is timed separately
with ``mtmg.method.alignment.teacher_embeddings``, the function ``align`` calls to fill it. Runs alternate
between the two settings, ``--rounds`` times.
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import open_clip
import torch
from _common import ROOT, footer, machine_header, setup_threads, table
from torchvision.transforms import InterpolationMode, Resize

from mtmg.core.config import AlignConfig, StudentConfig, TrainConfig
from mtmg.data import prompts
from mtmg.data.datasets import DatasetSubset, get_dataset
from mtmg.method import alignment
from mtmg.method.training import LOG, InMemoryDataset
from mtmg.models.student import build_student
from mtmg.models.zeroshot import build_zeroshot_head

EUROSAT = ROOT / "data" / "eurosat_ms_sample"
CPU = torch.device("cpu")


def build(size: int, samples: int):
    """Teacher tower, zero-shot head, student and in-memory training tiles at input size ``size``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-32", pretrained=None, force_image_size=size,
                                      force_quick_gelu=True).eval()
        head = build_zeroshot_head(clip, open_clip.get_tokenizer("ViT-B-32"), prompts.classnames("eurosat"),
                                   prompts.templates("eurosat"))
        student_cfg = StudentConfig(arch="vit_small_patch16_224", overrides={"img_size": size}, in_chans=13,
                                    drop_path=0.2, weights=None)
        student = build_student(student_cfg, head.weight.shape[1])
    ms_tf = None if size == 64 else Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    train = get_dataset("eurosat_ms", EUROSAT, "train", rgb_transform=open_clip.image_transform(size, is_train=False),
                        ms_transform=ms_tf)
    if samples > len(train):
        raise ValueError(f"--samples {samples}: the shipped train split has {len(train)} tiles")
    data = InMemoryDataset(DatasetSubset(train, list(range(samples))), ("rgb", "ms", "target"), desc="tiles")
    return clip.visual, head, student_cfg, student, data


def epoch_seconds(log: Path) -> list[float]:
    """Seconds of each epoch, from the ``seconds`` column of fit's log (time since the loop started)."""
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ends: dict[int, float] = {}
    for row in rows:
        ends[int(row["epoch"])] = float(row["seconds"])
    marks = [0.0] + [ends[e] for e in sorted(ends)]
    return [b - a for a, b in zip(marks, marks[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input size of teacher and student (default 64)")
    parser.add_argument("--samples", type=int, default=48, help="training tiles (default 48)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; see benchmarks/README.md on threads under load)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    print(machine_header("bench_align: alignment epoch, teacher cache vs recomputed teacher"), flush=True)

    teacher, head, student_cfg, student0, data = build(args.size, args.samples)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-4, weight_decay=0.01, warmup_steps=0,
                            grad_clip=1.0, checkpoint_every=0, num_workers=0)
    epochs: dict[bool, list[float]] = {True: [], False: []}
    cache_build: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-align-") as tmp:
        for r in range(args.rounds):
            t = time.perf_counter()
            alignment.teacher_embeddings(teacher, data, 1, device=CPU, batch_size=256)
            cache_build.append(time.perf_counter() - t)
            for cached in (True, False):
                cfg = AlignConfig(student=student_cfg, train=train_cfg, augment="none", teacher_cache=cached,
                                  eval_batch_size=256)
                out = Path(tmp) / f"r{r}-{cached}"
                alignment.align(teacher, copy.deepcopy(student0), head, False, data, cfg, out, device=CPU)
                per_epoch = epoch_seconds(out / "train" / LOG)
                epochs[cached] += per_epoch[1:] if len(per_epoch) > 1 else per_epoch
                if cached and not (out / alignment.TEACHER_CACHE).is_file():
                    raise RuntimeError("align() with teacher_cache=True wrote no teacher cache")
                print(f"  round {r + 1}: teacher_cache={cached}: epochs {', '.join(f'{s:.2f}' for s in per_epoch)} s",
                      flush=True)

    steps = -(-args.samples // args.batch)
    cached_s, recomputed_s = statistics.median(epochs[True]), statistics.median(epochs[False])
    build_s = statistics.median(cache_build)
    rows = [
        ("teacher cache (align default)", f"{cached_s:.2f}", f"{args.samples / cached_s:.1f}",
         f"{min(epochs[True]):.2f}-{max(epochs[True]):.2f}"),
        ("teacher recomputed each step", f"{recomputed_s:.2f}", f"{args.samples / recomputed_s:.1f}",
         f"{min(epochs[False]):.2f}-{max(epochs[False]):.2f}"),
        ("one-off cache fill (teacher_embeddings)", f"{build_s:.2f}", f"{args.samples / build_s:.1f}",
         f"{min(cache_build):.2f}-{max(cache_build):.2f}"),
    ]
    print(f"{args.samples} EuroSAT-MS tiles, {args.size} px, batch {args.batch} ({steps} steps/epoch), "
          f"{args.epochs} epochs x {args.rounds} rounds per setting; ViT-B-32 teacher, ViT-S/16 13-band student, "
          f"random weights, CPU fp32")
    print(table(["setting", "s/epoch (median)", "samples/s", "range s"], rows))
    five = (build_s + 5 * cached_s, 5 * recomputed_s)
    print(f"ratio recomputed / cached per epoch: {recomputed_s / cached_s:.2f}x "
          f"(teacher share of a recomputing epoch: {1 - cached_s / recomputed_s:.0%})")
    print(f"5 epochs (paper) incl. the cache fill: {five[0]:.1f} s cached vs {five[1]:.1f} s recomputed "
          f"-> {five[1] / five[0]:.2f}x")
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

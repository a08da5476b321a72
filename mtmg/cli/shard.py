"""``mtmg shard``: WebDataset shards of a multispectral dataset."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shard", help="convert splits of a multispectral dataset to WebDataset shards",
        description="Write each split of a multispectral dataset as WebDataset tar shards (13-band uint16 arrays "
                    "in SSL4EO order, labels, ids; class names and templates beside them). Read them back with "
                    "the dataset name 'shards' and the output folder as root.")
    p.add_argument("--dataset", required=True, help="dataset name in mtmg.data.datasets (e.g. bigearthnet19, sen12ms)")
    p.add_argument("--root", required=True, type=Path, help="dataset root folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (one per dataset)")
    p.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="split to convert; repeatable (default: train, val and test)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable or invalid files instead of stopping at the first one; they are "
                        "listed in <out>/<split>/skipped.tsv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtmg.cli.checks import require_writable_folder
    from mtmg.core.errors import ArgumentError
    from mtmg.data.datasets import dataset_class
    from mtmg.data.datasets.shards import SKIPPED_FILE, write_shards

    dataset_class(args.dataset)  # an unknown name fails at once
    if args.samples_per_shard < 1:
        raise ArgumentError(f"--samples-per-shard must be at least 1, got {args.samples_per_shard}")
    require_writable_folder(args.out, "--out")
    options = {"on_error": "skip"} if args.skip_bad else {}
    for split in args.split or ["train", "val", "test"]:
        folder = write_shards(args.dataset, args.root, args.out, split, args.samples_per_shard, **options)
        count = (folder / "nsamples.txt").read_text().strip()
        print(f"{args.dataset}/{split}: {count} samples in {folder}")
        skipped = folder / SKIPPED_FILE
        if skipped.is_file():
            n = len(skipped.read_text(encoding="utf-8").splitlines()) - 1
            print(f"{args.dataset}/{split}: left out {n} bad file(s), listed in {skipped}")
    return 0

"""``mtmg results``: the README's result tables for some training seeds of the default profile."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "results", help="print the README's result tables (stages, probes) for training seeds of a profile",
        description="Run (or reuse from the run store) both training stages and the linear probe of a profile for "
                    "each training seed and print the README's two tables as Markdown: stage 1 and 2 scores, "
                    "then the probes with their intervals and baselines. On two CPU threads each new seed takes "
                    "a few minutes.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="training seeds of both stages (default: 0)")
    p.add_argument("--profile", default="default", help="profile name under configs/ or a profile folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtmg.book.readme import tables
    from mtmg.core.errors import ArgumentError

    if any(s < 0 for s in args.seeds):
        raise ArgumentError(f"--seeds {args.seeds}: expected seeds >= 0")
    print(tables(args.seeds, args.profile))
    return 0

"""``mtmg probe``: linear probes of a profile's encoders (the student, its initial weights, both CLIP towers)."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe", help="linear probe of the aligned student and the CLIP towers on frozen embeddings",
        description="Fit logistic regressions on frozen embeddings of the train split (regularisation chosen on "
                    "validation) and score them on test: the aligned student on MS, its initial weights, patched "
                    "and zero-shot CLIP on RGB, with 1, 2, 5 and all training tiles per class, and the student's "
                    "gain over its initial weights with a paired-bootstrap interval. Runs stages 1 and "
                    "2 of the profile first when the run store has no finished folders for them.")
    p.add_argument("--profile", default="default", help="profile name under configs/ or a profile folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", action="append", default=[], metavar="NAME=PATH",
                   help="folder of a dataset, e.g. bigearthnet5=/data/bigearthnet (repeatable)")
    p.add_argument("--force", action="store_true", help="run the probe again even if its folder is complete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtmg.core.errors import ArgumentError
    from mtmg.evaluation.probe import probe_table
    from mtmg.runs import pipeline
    from mtmg.runs.profiles import load_profile

    roots = {}
    for item in args.data_root:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ArgumentError(f"--data-root {item!r}: expected NAME=PATH, e.g. bigearthnet5=/data/bigearthnet")
        roots[name] = path
    prof = load_profile(args.profile, device=args.device, data_roots=roots)
    run = pipeline.ensure_probe(prof, force=args.force)
    print(probe_table(run.results).to_string())
    print("\naligned student minus its initial weights (points; 95 % paired-bootstrap interval over the test tiles):")
    print(run.differences.to_string(index=False))
    print(f"results: {run.out_dir}")
    return 0

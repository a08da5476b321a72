"""``mtmg runs list|clean``: the folders of the run store, and removing the ones no longer needed."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "runs", help="list or remove stored stage results (runs/<profile>/<stage>/<key>)",
        description="Every stage result lives in runs/<profile>/<stage>/<key>/ (MTMG_RUNS moves runs/). "
                    "'list' shows them; 'clean' removes all but the ones the profile's own configs (without "
                    "notebook parameters) currently use, so other parameter sets and stale results go.")
    p.add_argument("action", choices=("list", "clean"))
    p.add_argument("--profile", help="only this profile")
    p.add_argument("--stage", help="only this stage (a name of mtmg.runs.pipeline.STAGES: zeroshot, patch, align, ...)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="clean: only runs finished this many days ago")
    p.add_argument("--all", action="store_true", help="clean: also the runs the profile's configs use now")
    p.add_argument("--dry-run", action="store_true", help="clean: show what would be removed, remove nothing")
    p.set_defaults(func=run)


def current_folders(profile: str) -> set[Path]:
    """The folders the configs of ``profile`` (no notebook parameters) use now; empty for unknown profiles."""
    from mtmg.runs import pipeline
    from mtmg.runs.profiles import load_profile

    try:
        prof = load_profile(profile)
    except FileNotFoundError:
        return set()
    return set(pipeline.stage_folders(prof).values())


def run(args: argparse.Namespace) -> int:
    from mtmg.core import paths, runstore
    from mtmg.core.errors import ArgumentError
    from mtmg.runs.pipeline import STAGES

    if args.stage is not None and args.stage not in STAGES:
        raise ArgumentError(f"--stage {args.stage!r}: expected one of {', '.join(STAGES)}")
    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise ArgumentError(f"--older-than {args.older_than}: expected a number of days, 0 or more (e.g. 7 or 0.5)")

    runs = [r for r in runstore.list_runs() if (args.profile is None or r.profile == args.profile)
            and (args.stage is None or r.stage == args.stage)]
    current = {f for profile in {r.profile for r in runs} for f in current_folders(profile)}
    if args.action == "list":
        print(f"{'profile':<10} {'stage':<17} {'key':<17} {'finished':<20} {'MiB':>8}  current")
        for r in runs:
            print(f"{r.profile:<10} {r.stage:<17} {r.key:<17} {r.finished or 'unfinished':<20} "
                  f"{r.bytes / 2**20:8.1f}  {'yes' if r.folder in current else ''}")
        print(f"{len(runs)} runs in {paths.runs_dir()}")
        return 0
    cutoff = None if args.older_than is None else time.time() - 86400 * args.older_than
    removed = 0
    for r in runs:
        if (r.folder in current and not args.all) or (cutoff is not None and r.folder.stat().st_mtime > cutoff):
            continue
        print(f"{'would remove' if args.dry_run else 'removing'} {r.folder} ({r.bytes / 2**20:.1f} MiB)")
        if not args.dry_run:
            runstore.remove_run(r)
        removed += 1
    print(f"{removed} of {len(runs)} runs {'would be ' if args.dry_run else ''}removed")
    return 0

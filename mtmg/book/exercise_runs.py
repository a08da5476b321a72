"""Run the exercises' changes side by side before the solutions page, which then reuses them.

    python -m mtmg.book.exercise_runs --profile default --jobs auto

Each change runs as the solutions page would run it (:func:`mtmg.book.teaching.run_exercise`), in a process
of its own; every stage runs on the thread count its config records (part of the run's key), so a run
made here is the run the page would make. ``--jobs auto`` runs as many changes at once as the cores hold
without sharing a core: ``cores // threads`` (2 on a 2-core machine with the default profile's 1 thread);
with 1 nothing is started here and the solutions page runs the changes one after the other. An exercise that
reads another's run (``reuses``) starts once that one has finished.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context

from mtmg.book import teaching
from mtmg.runs import profiles


def auto_jobs(threads: int, cores: int | None = None) -> int:
    """How many changes can run at once, each on ``threads`` threads, without sharing a core."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, threads))


def _run_one(profile: str, label: str) -> tuple[str, float]:
    exercise = next(ex for ex in teaching.EXERCISES if ex.label == label)
    return label, teaching.run_exercise(profiles.load_profile(profile), exercise).seconds


def run_all(profile: str, jobs: int) -> dict[str, float]:
    """Run every exercise's change with ``jobs`` worker processes; returns the seconds of each change's own
    stages (0 when it reused finished runs)."""
    book = profiles.load_profile(profile)
    for measure in dict.fromkeys(ex.measure for ex in teaching.EXERCISES):
        teaching.MEASURES[measure](book)  # the book's own runs first (reused after the warm-up): two changes
        # started together must not both find a stage they share missing (a second writer fails at once)
    waiting = list(teaching.EXERCISES)
    done: dict[str, float] = {}
    running: dict[Future, str] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        while waiting or running:
            ready = [ex for ex in waiting if ex.reuses is None or ex.reuses in done]
            if not ready and not running:
                raise ValueError(f"exercises {[ex.label for ex in waiting]} reuse runs no exercise makes")
            for ex in ready[: max(0, jobs - len(running))]:
                waiting.remove(ex)
                running[pool.submit(_run_one, profile, ex.label)] = ex.label
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                label, seconds = future.result()  # a failed change stops the whole run here
                done[label] = seconds
                print(f"{label}: {seconds:.0f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtmg.book.exercise_runs", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--jobs", default="auto", help="changes at once: a number, or auto (cores // threads)")
    args = parser.parse_args(argv)
    if args.profile != teaching.SOLUTIONS_PROFILE:
        print(f"no exercise runs: the solutions belong to the {teaching.SOLUTIONS_PROFILE!r} profile")
        return 0
    prof = profiles.load_profile(args.profile)
    threads = max(prof.patch.threads, prof.align.threads)
    if args.jobs == "auto":
        jobs = auto_jobs(threads)
    elif args.jobs.isdigit() and int(args.jobs) >= 1:
        jobs = int(args.jobs)
    else:
        parser.error(f"--jobs: expected a positive number or auto, got {args.jobs!r}")
    if jobs == 1:
        print(f"one change at a time ({os.cpu_count()} cores, {threads} threads a change): "
              "the solutions page runs them itself")
        return 0
    started = time.perf_counter()
    done = run_all(args.profile, jobs)
    print(f"{len(done)} exercise changes in {time.perf_counter() - started:.0f} s with {jobs} at once "
          f"({threads} threads each, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

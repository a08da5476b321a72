"""Loading and interpolating a large CLIP: mtmg's way against the plain one.

    .venv/bin/python benchmarks/bench_tower.py [--model ViT-L-14] [--rounds 3]

A random initialisation of ``--model`` (:func:`mtmg.models.clip.random_init_file`, in a temporary cache) is the
checkpoint file. Rows, timed in turn within each round:

* load, plain: ``open_clip.create_model_and_transforms(model, pretrained=file)``, which initialises the
  model at random and then replaces every weight with the file's;
* load, mtmg: ``mtmg.models.clip.load_clip(model, file)``, which skips the random draw
  (:func:`mtmg.models.clip.weights_loaded_later`) and identifies the weights by the file's content hash: once
  with the hash computed (the first load of a file in a process), once with it kept from before;
* interpolate, plain: ``visual.load_state_dict(interpolate_state_dicts(zs, ft, 0.5))``;
* interpolate, mtmg: ``load_interpolated(visual, zs, ft, 0.5)`` (the sweep of stage 1), checked bit for bit
  against the plain result.

Seconds per call, median [min-max] over rounds, and plain / mtmg.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import open_clip
import torch
from _common import footer, machine_header, setup_threads, table

from mtmg.method.patching import interpolate_state_dicts, load_interpolated
from mtmg.models import clip as models


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-L-14", help="open_clip model name (default ViT-L-14)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    setup_threads()
    print(machine_header(f"bench_tower: {args.model}, {args.rounds} rounds"))
    with tempfile.TemporaryDirectory() as cache:
        file = str(models.random_init_file(args.model, cache))
        print(f"checkpoint  {Path(file).name}, {Path(file).stat().st_size / 2**30:.2f} GiB")

        def plain_load():
            open_clip.create_model_and_transforms(args.model, pretrained=file)

        def mtmg_load_hashing():
            models._FILE_IDS.clear()
            models.load_clip(args.model, file)

        def mtmg_load():
            models.load_clip(args.model, file)

        visual = models.load_clip(args.model, file).model.visual
        zs = {k: v.clone() for k, v in visual.state_dict().items()}
        generator = torch.Generator().manual_seed(0)
        ft = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
              for k, v in zs.items()}
        load_interpolated(visual, zs, ft, 0.5)
        mine = {k: v.clone() for k, v in visual.state_dict().items()}
        visual.load_state_dict(interpolate_state_dicts(zs, ft, 0.5))
        if any(not torch.equal(mine[k], v) for k, v in visual.state_dict().items()):
            print("error: load_interpolated and interpolate_state_dicts disagree", file=sys.stderr)
            return 1

        rows = {"load, plain open_clip": plain_load, "load, mtmg, hashing the file": mtmg_load_hashing,
                "load, mtmg, hash kept": mtmg_load,
                "interpolate, load_state_dict(interpolate_state_dicts)": lambda: visual.load_state_dict(
                    interpolate_state_dicts(zs, ft, 0.5)),
                "interpolate, load_interpolated": lambda: load_interpolated(visual, zs, ft, 0.5)}
        times: dict[str, list[float]] = {name: [] for name in rows}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(args.rounds):
                for name, fn in rows.items():
                    times[name].append(_seconds(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    base = {"load": median["load, plain open_clip"],
            "interpolate": median["interpolate, load_state_dict(interpolate_state_dicts)"]}
    print(table(["call", "seconds: median [min-max]", "plain / this"],
                [[name, f"{median[name]:.2f} [{min(t):.2f}-{max(t):.2f}]",
                  f"{base[name.split(',')[0]] / median[name]:.2f}x"] for name, t in times.items()]))
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

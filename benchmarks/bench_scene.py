"""Mapping a whole Sentinel-2 tile: reading time, model time per encoder, peak memory, full-tile projection.

    .venv/bin/python benchmarks/bench_scene.py [--side 10980] [--model-windows 512] [--threads 1]

Writes a random-valued 13-band tile once into a temporary folder, one GeoTIFF per band at its native
resolution as a product's ``IMG_DATA`` holds them (``--side`` pixels at 10 m, half at 20 m, a sixth at 60 m;
uint16 in [1, 4000], tiled 512 x 512, uncompressed), then

1. reads every 64 px window of it through :func:`mtmg.data.scene.iter_windows` (all 13 bands onto the 10 m
   grid, bilinear for the 20 m and 60 m bands, strip by strip) and reports the time and the peak resident
   memory the pass added (``ru_maxrss`` after it minus before it);
2. embeds ``--model-windows`` windows with each encoder of the default profile through
   :meth:`mtmg.mapping.encoders.SceneEncoders.embed` (the student on the MS view; MiniCLIP's image tower on the
   RGB composite, CLIP preprocessing included) and reports windows/s. Speed does not depend on the weights,
   so the towers are untrained (no stage has to run);
3. projects the time of a full map: reading + all windows through each encoder.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from _common import footer, machine_header, setup_threads
from rasterio.transform import Affine

from mtmg.data.scene import iter_windows, open_scene, window_grid
from mtmg.data.sentinel2 import BAND_RESOLUTION_M, SSL4EO_BANDS
from mtmg.mapping.encoders import Prompts, SceneEncoders, window_size
from mtmg.models.clip import load_clip
from mtmg.models.student import build_student
from mtmg.runs.profiles import load_profile


def peak_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_tile(folder: Path, side: int, seed: int = 0) -> None:
    """One random uint16 GeoTIFF per band at its native resolution, written strip by strip."""
    rng = np.random.default_rng(seed)
    for band in SSL4EO_BANDS:
        res = BAND_RESOLUTION_M[band]
        n = side * 10 // res
        profile = {"driver": "GTiff", "height": n, "width": n, "count": 1, "dtype": "uint16", "tiled": True,
                   "blockxsize": 512, "blockysize": 512, "crs": "EPSG:32618",
                   "transform": Affine(res, 0, 399960, 0, -res, 4200000)}
        with rasterio.open(folder / f"T18SVG_20160112T160642_{band}.tif", "w", **profile) as dst:
            for y in range(0, n, 512):
                h = min(512, n - y)
                dst.write(rng.integers(1, 4000, size=(1, h, n), dtype=np.uint16),
                          window=((y, y + h), (0, n)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=10980, help="tile side in 10 m pixels (default: a full tile)")
    parser.add_argument("--model-windows", type=int, default=512, help="windows embedded per encoder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    setup_threads(args.threads)
    print(machine_header("bench_scene: mapping a whole Sentinel-2 tile"))
    prof = load_profile("default")
    size = window_size(prof)
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-scene-") as tmp:
        t = time.perf_counter()
        write_tile(Path(tmp), args.side)
        print(f"wrote a random {args.side} x {args.side} px tile (13 bands, native resolutions) in "
              f"{time.perf_counter() - t:.1f} s")

        before = peak_mib()
        sample = []
        with open_scene(tmp) as scene:
            rows, cols = window_grid(scene, size)
            t = time.perf_counter()
            for _, array, _ in iter_windows(scene, size, progress=True):
                if len(sample) < args.model_windows:
                    sample.append(array.copy())
            read_s = time.perf_counter() - t
            level = scene.level
        read_peak = peak_mib() - before
        n = rows * cols
        print(f"read {n} windows of {size} px ({rows} x {cols}) in {read_s:.1f} s: {n / read_s:.0f} windows/s; "
              f"peak resident memory +{read_peak:.0f} MiB over {before:.0f} MiB")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundle = load_clip(prof.patch.clip.name, None)
            student = build_student(dataclasses.replace(prof.align.student, weights=None),
                                    bundle.model.visual.output_dim)
        encoders = SceneEncoders(bundle, {"student": student, "patched": bundle.model.visual},
                                 Prompts(("a",), ("a",), ("{}",)), size, prof.align.ms_size,
                                 batch_size=prof.align.eval_batch_size)
        rates = {}
        for name in encoders.towers:
            encoders.embed(name, sample[:8], level)  # warm-up
            t = time.perf_counter()
            for i in range(0, len(sample), encoders.batch_size):
                encoders.embed(name, sample[i:i + encoders.batch_size], level)
            rates[name] = len(sample) / (time.perf_counter() - t)
        print(f"model, {len(sample)} windows in batches of {encoders.batch_size} ({args.threads} thread(s)):")
        for name, rate in rates.items():
            print(f"  {name:8s} {rate:7.0f} windows/s -> {n / rate:7.0f} s for the tile")
        total = read_s + sum(n / r for r in rates.values())
        print(f"projected full map (read + student + one CLIP tower): {total:.0f} s = {total / 60:.1f} min "
              f"(+{n / rates['patched']:.0f} s for zero-shot CLIP as well); peak memory of the whole run "
              f"{peak_mib():.0f} MiB")
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

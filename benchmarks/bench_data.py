"""Data throughput: EuroSAT-MS through mtmg against a bare rasterio read, and BigEarthNet band files
against WebDataset shards.

    .venv/bin/python benchmarks/bench_data.py [--rounds 5] [--repeats 20] [--size 64]

A. EuroSAT-MS (``data/eurosat_ms_sample``, 200 real 13-band tiles, split ``all``): tiles per second of
   ``rasterio.open(path).read()`` alone, of the mtmg dataset without transforms (checked read, band
   reorder, MS view, RGB composite) and with a CLIP-style 64 px preprocessing of the composite.
B. BigEarthNet v1 (``data/bigearthnet_sample/v1``, 6 real patches): the shipped sample is too small for
   a stable rate, so a temporary root lists each patch ``--repeats`` times (symbolic links to the same
   files) and the rates are measured on these repeated real patches. Samples per second of the raw
   reader (12 band GeoTIFFs per patch, resampled to 120 px) against the shards written from it by
   ``mtmg.data.datasets.shards.write_shards``, read back map-style (``get_dataset("shards", ...)``) and streaming
   (``webdataset_pipeline``). Every contender runs once untimed first, so the page cache is warm.

Each round runs every contender once, in turn; the tables give the median rate over rounds with the
range. All reads are single-process with one torch thread, as in a DataLoader worker (PyTorch sets one
thread per worker). One extra EuroSAT row repeats the dataset with 2 torch threads: on a loaded machine
the thread pool's wake-up can cost more than the small elementwise work it splits.
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
import rasterio
import torch
from _common import ROOT, footer, interleaved, machine_header, read_all, read_raw, setup_threads, spread, table
from rasterio.errors import NotGeoreferencedWarning

from mtmg.data.datasets import get_dataset
from mtmg.data.datasets.bigearthnet import S2_DIRS_V1
from mtmg.data.datasets.shards import webdataset_pipeline, write_shards

EUROSAT = ROOT / "data" / "eurosat_ms_sample"
BIGEARTHNET = ROOT / "data" / "bigearthnet_sample" / "v1"
BEN_S2 = BIGEARTHNET / "BigEarthNet-S2-Example"


def read_stream(pipeline) -> int:
    return sum(1 for _ in pipeline)


def with_threads(threads: int, fn):
    """``fn`` run with ``threads`` torch threads (restored afterwards)."""
    def run() -> int:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def bare_rasterio(files: list[Path]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for path in files:
            with rasterio.open(path) as src:
                src.read()
    return len(files)


def bench_eurosat(rounds: int, size: int) -> str:
    files = sorted(EUROSAT.glob("*/*.tif"))
    plain = get_dataset("eurosat_ms", EUROSAT, "all")
    clip64 = get_dataset("eurosat_ms", EUROSAT, "all", rgb_transform=open_clip.image_transform(size, is_train=False))
    if len(plain) != len(files):
        raise RuntimeError(f"{EUROSAT}: the dataset lists {len(plain)} tiles, the folder holds {len(files)}")
    runs = {
        "bare rasterio open + read()": lambda: bare_rasterio(files),
        "mtmg eurosat_ms, no transform": lambda: read_all(plain),
        f"mtmg eurosat_ms, rgb {size} px CLIP preprocessing": lambda: read_all(clip64),
        "mtmg eurosat_ms, no transform, 2 torch threads": with_threads(2, lambda: read_all(plain)),
    }
    for fn in runs.values():  # warm the page cache and the imports
        fn()
    rates = interleaved(runs, rounds)
    base = statistics.median(rates["bare rasterio open + read()"])
    rows = [(name, spread(r), f"{statistics.median(r) / base:.2f}") for name, r in rates.items()]
    return (f"A. EuroSAT-MS: {len(files)} real tiles (13 x 64 x 64 uint16), {rounds} rounds, one pass each\n"
            + table(["reader", "tiles/s median [range]", "x bare"], rows))


def repeated_bigearthnet_root(out: Path, repeats: int) -> int:
    """A v1 root that lists every shipped S2 patch ``repeats`` times, as symbolic links to its files."""
    s2 = out / S2_DIRS_V1[0]
    names = []
    for patch_dir in sorted(p for p in BEN_S2.iterdir() if p.is_dir()):
        patch = patch_dir.name
        for r in range(repeats):
            name = f"{patch}_r{r:04d}"
            target = s2 / name
            target.mkdir(parents=True)
            for f in patch_dir.iterdir():
                (target / f.name.replace(patch, name, 1)).symlink_to(f.resolve())
            names.append(name)
    (out / "bigearthnet-train.csv").write_text("".join(f"{n},\n" for n in names))
    return len(names)


def bench_bigearthnet(rounds: int, repeats: int) -> str:
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-") as tmp:
        root, shard_dir = Path(tmp) / "ben", Path(tmp) / "shards"
        n = repeated_bigearthnet_root(root, repeats)
        raw = get_dataset("bigearthnet19", root, "train")
        t = time.perf_counter()
        write_shards("bigearthnet19", root, shard_dir, "train", samples_per_shard=1000)
        write_s = time.perf_counter() - t
        shards = get_dataset("shards", shard_dir, "train")
        stream = webdataset_pipeline(shard_dir, "train")
        a, b = raw[n - 1], shards[n - 1]
        if not all(torch.equal(a[k], b[k]) for k in ("ms", "rgb", "target")):
            raise RuntimeError("shards and band files give different samples; the comparison would be meaningless")
        shard_mb = sum(p.stat().st_size for p in (shard_dir / "train").glob("*.tar")) / 2**20
        runs = {
            "band GeoTIFFs (bigearthnet19), sample dict": lambda: read_all(raw),
            "shards map-style (get_dataset 'shards')": lambda: read_all(shards),
            "shards streaming (webdataset_pipeline)": lambda: read_stream(stream),
            "band GeoTIFFs, array only (.raw)": lambda: read_raw(raw),
            "shards map-style, array only (.raw)": lambda: read_raw(shards),
        }
        for fn in runs.values():
            fn()
        rates = interleaved(runs, rounds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["band GeoTIFFs (bigearthnet19), sample dict"]
    rows = [(name, spread(r), f"{med[name] / base:.2f}") for name, r in rates.items()]
    ratio_dict = med["shards map-style (get_dataset 'shards')"] / base
    ratio_stream = med["shards streaming (webdataset_pipeline)"] / base
    ratio_raw = med["shards map-style, array only (.raw)"] / med["band GeoTIFFs, array only (.raw)"]
    return (f"B. BigEarthNet-19: {n} samples = the 6 real shipped patches repeated {repeats} times "
            f"(page cache warm), {rounds} rounds, one pass each\n"
            f"   shards written once by mtmg.data.datasets.shards.write_shards in {write_s:.1f} s "
            f"({shard_mb:.0f} MiB)\n"
            + table(["reader", "samples/s median [range]", "x band files"], rows)
            + f"\n   ratio shards / band files: {ratio_dict:.1f}x (map-style), {ratio_stream:.1f}x (streaming), "
              f"{ratio_raw:.1f}x (array only)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per reader (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="times each BigEarthNet patch is listed (default 20)")
    parser.add_argument("--size", type=int, default=64, help="CLIP preprocessing size for EuroSAT (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a loader worker)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    print(machine_header("bench_data: dataset throughput, single process"), flush=True)
    print(bench_eurosat(args.rounds, args.size), flush=True)
    print(bench_bigearthnet(args.rounds, args.repeats), flush=True)
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

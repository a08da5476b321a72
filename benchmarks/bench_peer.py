"""mtmg beside its peers: CLIP_benchmark zero-shot classification and torchgeo's EuroSAT reader.

    .venv/bin/pip install -e ".[bench]"        # CLIP_benchmark, benchmarks only
    .venv/bin/python benchmarks/bench_peer.py [--rounds 3] [--batch 64]

A. Zero-shot classification, CLIP_benchmark against ``mtmg zeroshot``. The shipped 200 EuroSAT-MS tiles
   (train, val and test splits) are written once as WebDataset shards with ``python -m mtmg shard``
   (CLIP_benchmark's layout: ``classnames.txt``, ``zeroshot_classification_templates.txt``,
   ``{split}/nshards.txt``, ``{split}/0.tar``). mtmg's shards hold the 13-band arrays; CLIP_benchmark
   reads images, so the RGB composites of those same shards are exported once with CLIP_benchmark's own
   ``convert_dataset`` as lossless PNG, with the same class names and templates. Both command lines then
   run in this process (the MiniCLIP open_clip config registered first) with the same weights file
   (``mtmg.method.miniclip.ensure_miniclip``: the shipped MiniCLIP), fp32, batch ``--batch``, no worker
   processes, a fresh zero-shot head each run: ``mtmg zeroshot --dataset shards`` and
   ``clip_benchmark eval --dataset wds/... --task zeroshot_classification --no_amp``. Timed: the whole
   command (model load, text head, every split). Checked before timing: the top-1 accuracy in both
   result files is identical, and so is the predicted class of every tile (CLIP_benchmark's
   ``zero_shot_classifier`` + ``run_classification`` against mtmg's ``ImageClassifier`` on the same shards).
B. Data loading, torchgeo ``EuroSAT`` against mtmg's ``eurosat_ms`` reader on the same files: a temporary
   root in torchgeo's layout (``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>`` linked to
   the shipped class folders, ``eurosat-{split}.txt`` from the shipped split); both read it. Checked
   first: torchgeo's image, reordered to SSL4EO bands, equals mtmg's raw array for every tile. Timed:
   tiles/s of ``torchgeo EuroSAT[i]`` (all 13 bands, float), mtmg ``.raw(i)`` (the same array, uint16)
   and mtmg ``[i]`` (the full paired sample: MS view and RGB composite).

Rounds alternate the contenders; tables give the median with the range. One torch thread by default.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, footer, interleaved, machine_header, read_all, read_raw, spread, table
from PIL import Image

from mtmg.cli import main as mtmg_main
from mtmg.core import paths
from mtmg.data.datasets import get_dataset
from mtmg.data.datasets.eurosat import EUROSAT_CLASSES
from mtmg.data.sentinel2 import EUROSAT_FILE_BANDS, to_ssl4eo
from mtmg.method.miniclip import MODEL_CONFIG_DIR, MODEL_NAME, ensure_miniclip
from mtmg.models.clip import ImageClassifier, load_clip, register_model_config
from mtmg.models.zeroshot import build_zeroshot_head

EUROSAT = ROOT / "data" / "eurosat_ms_sample"
SPLITS = ("train", "val", "test")
TORCHGEO_TIF = Path("ds", "images", "remote_sensing", "otherDatasets", "sentinel_2", "tif")


class CompositeImages(torch.utils.data.Dataset):
    """(PIL RGB composite, label) pairs of one split of mtmg's shards, for CLIP_benchmark's exporter."""

    def __init__(self, shards: Path, split: str) -> None:
        self.data = get_dataset("shards", shards, split)
        self.classes, self.templates = self.data.classnames, self.data.templates

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[i]
        return Image.fromarray(item["rgb"].permute(1, 2, 0).numpy()), int(item["target"])


def write_shards(tmp: Path) -> tuple[Path, Path]:
    """mtmg shards of the shipped tiles, and CLIP_benchmark image shards exported from them."""
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset

    ours, theirs = tmp / "mtmg-shards", tmp / "clipbench-shards"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mtmg_main(["shard", "--dataset", "eurosat_ms", "--root", str(EUROSAT), "--out", str(ours)])
        for split in SPLITS:
            convert_dataset(CompositeImages(ours, split), split, str(theirs), transform=PIL_to_bytes("png"),
                            image_format="png", verbose=False)
    return ours, theirs


def run_mtmg(weights: Path, shards: Path, out: Path, batch: int) -> float:
    """``mtmg zeroshot`` on every split; returns the top-1 over all tiles."""
    hits = n = 0
    for split in SPLITS:
        result = out / f"mtmg-{split}.json"
        with tempfile.TemporaryDirectory() as heads, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            code = mtmg_main(["zeroshot", "--model", MODEL_NAME, "--pretrained", str(weights), "--dataset", "shards",
                              "--root", str(shards), "--split", split, "--batch-size", str(batch), "--workers", "0",
                              "--device", "cpu", "--out", str(result), "--cache-dir", heads])
        if code:
            raise RuntimeError(f"mtmg zeroshot failed on {split} (exit {code})")
        data = json.loads(result.read_text())
        hits += data["metrics"]["top1"] * data["n_samples"]
        n += data["n_samples"]
    return hits / n


def _numpy2_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """CLIP_benchmark 1.6.2's ``accuracy`` with ``.item()``: its ``float()`` of a 1-element array fails
    under numpy 2; the arithmetic is unchanged."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def run_clip_benchmark(weights: Path, shards: Path, out: Path, batch: int) -> float:
    """``clip_benchmark eval`` on every split; returns the top-1 over all tiles."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    zeroshot_classification.accuracy = _numpy2_accuracy

    hits = n = 0
    for split in SPLITS:
        result = out / f"clipbench-{split}.json"
        argv = ["clip_benchmark", "eval", "--dataset", "wds/eurosat_ms", "--dataset_root", str(shards),
                "--split", split, "--model", MODEL_NAME, "--pretrained", str(weights), "--task",
                "zeroshot_classification", "--no_amp", "--num_workers", "0", "--batch_size", str(batch),
                "--output", str(result), "--quiet"]
        with _argv(argv), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli.main()
        acc = json.loads(result.read_text())["metrics"]["acc1"]
        size = len(get_dataset("eurosat_ms", EUROSAT, split))
        hits += acc * size
        n += size
    return hits / n


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def predictions(weights: Path, ours: Path, theirs: Path, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class of every tile: mtmg's classifier on its shards, CLIP_benchmark's on its shards."""
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    bundle = load_clip(MODEL_NAME, weights, "cpu")
    mine, peer = [], []
    for split in SPLITS:
        data = get_dataset("shards", ours, split, rgb_transform=bundle.preprocess_val)
        head = build_zeroshot_head(bundle, None, data.classnames, data.templates)
        classifier = ImageClassifier(bundle.model.visual, head).eval()
        with torch.no_grad():
            for b in torch.utils.data.DataLoader(data, batch_size=batch):
                mine.append(classifier(b["rgb"]).argmax(-1))
        wds = build_dataset("wds/eurosat_ms", root=str(theirs), transform=bundle.preprocess_val, split=split)
        loader = torch.utils.data.DataLoader(wds.batched(batch), batch_size=None, num_workers=0)
        with contextlib.redirect_stderr(io.StringIO()):
            clf = zero_shot_classifier(bundle.model, bundle.tokenizer, wds.classes, wds.templates, "cpu", amp=False)
            logits, _ = run_classification(bundle.model, clf, loader, "cpu", amp=False)
        peer.append(logits.argmax(-1))
    return torch.cat(mine).numpy(), torch.cat(peer).numpy()


def torchgeo_root(tmp: Path) -> Path:
    """A root in torchgeo's EuroSAT layout that links to the shipped tiles and split."""
    root = tmp / "torchgeo-eurosat"
    (root / TORCHGEO_TIF).mkdir(parents=True)
    for name in EUROSAT_CLASSES:
        (root / TORCHGEO_TIF / name).symlink_to(EUROSAT / name, target_is_directory=True)
    for split in SPLITS:
        (root / f"eurosat-{split}.txt").write_text(
            (ROOT / "data" / "splits" / f"eurosat_ms_sample-{split}.txt").read_text())
    return root


def check_same_tiles(tg, ours) -> None:
    """torchgeo's image (file band order, float) equals mtmg's raw array (SSL4EO order) for every tile."""
    by_id = {ours.records[i].id: i for i in range(len(ours))}
    if len(tg) != len(ours):
        raise RuntimeError(f"torchgeo lists {len(tg)} tiles, mtmg {len(ours)}")
    for i, (path, label) in enumerate(tg.samples):
        raw, target, _ = ours.raw(by_id[Path(path).stem])
        image = tg[i]["image"].numpy().astype(np.uint16)
        if not np.array_equal(to_ssl4eo(image, EUROSAT_FILE_BANDS), raw) or label != target:
            raise RuntimeError(f"{path}: torchgeo and mtmg disagree on this tile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each contender (default 3)")
    parser.add_argument("--batch", type=int, default=64, help="zero-shot batch size of both tools (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="MiniCLIP-64 weights file (default: the shipped weights, via ensure_miniclip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(machine_header("bench_peer: mtmg vs CLIP_benchmark and torchgeo"), flush=True)
    register_model_config(MODEL_CONFIG_DIR)
    weights = args.weights or ensure_miniclip(paths.cache_dir())
    with tempfile.TemporaryDirectory(prefix="mtmg-bench-peer-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        ours, theirs = write_shards(tmp)
        print(f"shards written in {time.perf_counter() - t:.1f} s (mtmg shard + CLIP_benchmark PNG export)")
        mine, peer = predictions(weights, ours, theirs, args.batch)
        agree = int((mine == peer).sum())
        print(f"per-tile predicted class: {agree} of {len(mine)} identical")
        if agree != len(mine):
            print("predictions differ: not timing")
            return 1
        acc: dict[str, list[float]] = {"mtmg zeroshot": [], "clip_benchmark eval": []}

        def timed(name, fn):
            def run() -> int:
                acc[name].append(fn(weights, ours if name.startswith("mtmg") else theirs, tmp, args.batch))
                return len(mine)
            return run

        rates = interleaved({name: timed(name, fn) for name, fn in
                             (("mtmg zeroshot", run_mtmg), ("clip_benchmark eval", run_clip_benchmark))}, args.rounds)
        print(f"\nA. zero-shot, {len(mine)} tiles (3 splits), {MODEL_NAME} weights {weights.name}, fp32, "
              f"batch {args.batch}, "
              f"whole command incl. model load and text head; {args.rounds} rounds")
        base = statistics.median(rates["clip_benchmark eval"])
        print(table(["tool", "images/s", "x CLIP_benchmark", "top-1 (all rounds)"],
                    [(name, spread(r), f"{statistics.median(r) / base:.2f}",
                      ", ".join(sorted({f'{a:.4f}' for a in acc[name]}))) for name, r in rates.items()]))
        same = {f"{a:.10f}" for v in acc.values() for a in v}
        print(f"top-1 identical across tools and rounds: {len(same) == 1}")

        root = torchgeo_root(tmp)
        from torchgeo.datasets import EuroSAT

        tg = {s: EuroSAT(str(root), split=s) for s in SPLITS}
        mt = {s: get_dataset("eurosat_ms", root, s) for s in SPLITS}
        for s in SPLITS:
            check_same_tiles(tg[s], mt[s])
        print(f"\nB. torchgeo EuroSAT and mtmg eurosat_ms on the same root: every tile identical "
              f"({sum(len(d) for d in mt.values())} tiles)")
        runs = {"torchgeo EuroSAT[i] (13 bands, float)": lambda: sum(read_all(tg[s]) for s in SPLITS),
                "mtmg .raw(i) (13 bands, uint16)": lambda: sum(read_raw(mt[s]) for s in SPLITS),
                "mtmg [i] (MS view + RGB composite)": lambda: sum(read_all(mt[s]) for s in SPLITS)}
        for fn in runs.values():
            fn()
        rates = interleaved(runs, args.rounds)
        base = statistics.median(rates["torchgeo EuroSAT[i] (13 bands, float)"])
        print(table(["reader", "tiles/s", "x torchgeo"],
                    [(name, spread(r), f"{statistics.median(r) / base:.2f}") for name, r in rates.items()]))
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

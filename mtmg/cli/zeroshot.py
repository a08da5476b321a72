"""``mtmg zeroshot``: zero-shot evaluation of a CLIP model on one dataset split."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mtmg import __version__


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zeroshot", help="zero-shot classification of a CLIP model on a dataset",
        description="Zero-shot evaluation of a CLIP model on the RGB view of a dataset: builds the text head "
                    "from the dataset's class names and templates, prints a table and writes a JSON result.")
    p.add_argument("--model", required=True,
                   help="open_clip model name (e.g. ViT-B-32, MiniCLIP-64) or local-dir:PATH; for a checkpoint "
                        "file of OpenAI-trained weights use the -quickgelu name (e.g. ViT-B-32-quickgelu)")
    p.add_argument("--pretrained",
                   help="open_clip tag (e.g. openai), checkpoint file, local-dir:PATH or directory, or 'random' "
                        "for a random initialisation; required unless --model is local-dir:PATH")
    p.add_argument("--model-config", action="append", default=[], metavar="PATH",
                   help="register an open_clip JSON model config (its file name is the model name); repeatable")
    p.add_argument("--dataset", required=True, help="dataset name in mtmg.data.datasets (e.g. eurosat_ms)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--cache-dir", type=Path,
                   help="where zero-shot heads are cached (default: <cache>/heads, see mtmg.core.paths)")
    p.add_argument("--split-file", type=Path, metavar="PATH",
                   help="text file listing the split's files, one name per line, for a dataset without split "
                        "files of its own (readers with split files: eurosat_ms, eurosat_rgb, resisc45, "
                        "bigearthnet5/19/43)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="raise: stop at the first unreadable or invalid file (default); skip: leave such files "
                        "out, evaluate the rest and list what was left out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import inspect

    from mtmg.cli.checks import require_writable_file
    from mtmg.core import paths
    from mtmg.core.config import DataSpec
    from mtmg.core.device import resolve_device
    from mtmg.core.errors import ArgumentError
    from mtmg.data import tasks
    from mtmg.data.datasets import dataset_class
    from mtmg.evaluation.scoring import score_zeroshot
    from mtmg.models.clip import load_clip, register_model_config

    if args.pretrained is None and not args.model.startswith("local-dir:"):
        raise ArgumentError("--pretrained is required (a tag, a file, a directory or 'random')")
    reader = dataset_class(args.dataset)  # an unknown name fails before the model is loaded
    options: dict[str, Any] = {"on_error": args.on_error} if args.on_error != "raise" else {}
    if args.split_file is not None:
        if "split_file" not in inspect.signature(reader).parameters:
            raise ArgumentError(f"--split-file: dataset {args.dataset} reads its splits from its own layout and "
                                "takes no split file; drop --split-file")
        if not args.split_file.is_file():
            raise ArgumentError(f"--split-file {args.split_file}: file not found")
        options["split_file"] = str(args.split_file.resolve())
    if args.out is not None:
        require_writable_file(args.out, "--out")  # before the evaluation, not after it
    for config in args.model_config:
        register_model_config(config)
    device = resolve_device(args.device)
    pretrained = None if args.pretrained in (None, "random") else args.pretrained
    bundle = load_clip(args.model, pretrained, device)
    spec = DataSpec(name=args.dataset, root=str(Path(args.root).expanduser().absolute()), options=options)
    heads_dir = args.cache_dir if args.cache_dir is not None else paths.cache_dir() / tasks.HEADS
    score = score_zeroshot(bundle, spec, args.split, heads_dir=heads_dir, device=device,
                           batch_size=args.batch_size, num_workers=args.workers)
    result = {
        "command": "zeroshot",
        "dataset": args.dataset,
        "split": args.split,
        "root": str(args.root),
        "model": bundle.model_name,
        "pretrained": args.pretrained,
        "weights": bundle.weights,
        "multilabel": score.multilabel,
        "classes": list(score.classes),
        "n_samples": score.n_samples,
        "metrics": score.metrics,
        "device": str(device),
        "mtmg_version": __version__,
        "skipped": [{"path": str(item.path), "reason": item.reason} for item in score.skipped],
    }
    print(format_zeroshot_table(result))
    if score.skipped:
        print(f"left out {len(score.skipped)} bad file(s) (--on-error skip):")
        print("\n".join(f"  {item.path}: {item.reason}" for item in score.skipped))
    if args.out is not None:
        write_json(result, args.out)
        print(f"wrote {args.out}")
    return 0


def format_zeroshot_table(result: dict) -> str:
    """Plain-text table of a zero-shot result: headline metric, then one row per class (in %)."""
    m = result["metrics"]
    name, value, per_class = (("macro AP", m["macro_ap"], m["per_class_ap"]) if result["multilabel"]
                              else ("top-1 accuracy", m["top1"], m["per_class_accuracy"]))
    width = max(len(c) for c in result["classes"] + [name])
    lines = [f"{result['model']} ({result['weights']}) on {result['dataset']}/{result['split']}, "
             f"{result['n_samples']} samples",
             f"{name:<{width}}  {_percent(value)}", "-" * (width + 9)]
    lines += [f"{c:<{width}}  {_percent(v)}" for c, v in zip(result["classes"], per_class)]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "    n/a" if value is None or math.isnan(value) else f"{100 * value:6.2f}%"


def write_json(data: dict, path: Path) -> None:
    """Write strict JSON (NaN becomes null, meaning undefined), atomically."""
    from mtmg.core.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(_strict(data), indent=2) + "\n")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value

"""Command line: ``python -m mtmg <command> ...``; one ``add_<command>_parser`` and one ``run_<command>``
function per subcommand."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from mtmg import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtmg", description="Mind the Modality Gap: zero-shot evaluation, CLIP patching and MS alignment.")
    parser.add_argument("--version", action="version", version=f"mtmg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_zeroshot_parser(subparsers)
    add_patch_parser(subparsers)
    add_align_parser(subparsers)
    add_shard_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status."""
    from mtmg.models import WeightsUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsUnavailableError, FileNotFoundError) as e:
        print(f"mtmg {args.command}: error: {e}", file=sys.stderr)
        return 2


# --- zeroshot -------------------------------------------------------------------------------------------

def add_zeroshot_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--dataset", required=True, help="dataset name in mtmg.datasets (e.g. eurosat_ms)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--cache-dir", type=Path,
                   help="where zero-shot heads are cached (default: <cache>/heads, see mtmg.paths)")
    p.set_defaults(func=run_zeroshot)


def run_zeroshot(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from mtmg import paths, prompts
    from mtmg.datasets import get_dataset
    from mtmg.device import resolve_device
    from mtmg.evaluation import evaluate_zeroshot
    from mtmg.models import ImageClassifier, load_clip, register_model_config
    from mtmg.zeroshot import zeroshot_head

    if args.pretrained is None and not args.model.startswith("local-dir:"):
        print("mtmg zeroshot: error: --pretrained is required (a tag, a file, a directory or 'random').",
              file=sys.stderr)
        return 2
    for config in args.model_config:
        register_model_config(config)
    device = resolve_device(args.device)
    pretrained = None if args.pretrained in (None, "random") else args.pretrained
    bundle = load_clip(args.model, pretrained, device)
    dataset = get_dataset(args.dataset, args.root, args.split, rgb_transform=bundle.preprocess_val)
    classnames, templates = prompts.for_dataset(dataset)
    cache_dir = args.cache_dir if args.cache_dir is not None else paths.cache_dir() / "heads"
    head = zeroshot_head(bundle, classnames, templates, cache_dir=cache_dir, dataset=args.dataset)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_zeroshot(ImageClassifier(bundle.model.visual, head), loader, "rgb", dataset.multilabel,
                                device, desc=f"zero-shot {args.dataset}/{args.split}")
    result = {
        "command": "zeroshot",
        "dataset": args.dataset,
        "split": args.split,
        "root": str(args.root),
        "model": bundle.model_name,
        "pretrained": args.pretrained,
        "weights": bundle.weights,
        "multilabel": dataset.multilabel,
        "classes": list(dataset.classes),
        "n_samples": metrics.pop("n_samples"),
        "metrics": metrics,
        "device": str(device),
        "mtmg_version": __version__,
    }
    print(format_zeroshot_table(result))
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
    """Write strict JSON (NaN becomes null, meaning undefined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict(data), indent=2) + "\n")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


# --- patch and align ------------------------------------------------------------------------------------

def _add_stage_arguments(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", required=True, type=Path,
                   help=f"YAML config (configs/default/{stage}.yaml: embedded default; configs/paper/{stage}.yaml)")
    p.add_argument("--out", type=Path, help=f"output folder (default: the config's out_dir, else runs/<profile>/{stage})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue training from the last checkpoint in the output folder")


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[str]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group, NCCL on CUDA and Gloo on the CPU, and
    yield this rank's device (``cuda:LOCAL_RANK`` on CUDA); otherwise yield ``device`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device
        return
    import torch
    import torch.distributed as dist

    from mtmg.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield str(dev)
    finally:
        dist.destroy_process_group()


def add_patch_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "patch", help="stage 1: PAINT patching of CLIP's image tower on RGB composites",
        description="Fine-tune CLIP's image tower through the frozen zero-shot head of the patching task, "
                    "interpolate with the zero-shot weights for each alpha, choose alpha on validation splits "
                    "(patching and supported tasks) and write the patched tower and a scores table.")
    _add_stage_arguments(p, "patch")
    p.set_defaults(func=run_patch)


def run_patch(args: argparse.Namespace) -> int:
    from mtmg.config import PatchConfig, load_config
    from mtmg.patching import run_patching

    with _process_group(args.device) as device:
        result = run_patching(load_config(args.config, PatchConfig), out_dir=args.out, device=device,
                              resume=args.resume)
    if result is None:  # a rank other than 0 under torchrun
        return 0
    table = result.scores.pivot_table(index="alpha", columns=["task", "split"], values="value")
    print((100 * table).round(2).to_string())
    print(f"selected alpha (mean validation score): {result.alpha:g}; outputs in {result.out_dir}")
    return 0


def add_align_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align", help="stage 2: align a 13-band Sentinel-2 student to the patched CLIP image tower",
        description="Distil the patched image tower (teacher, RGB composites) into a multispectral student "
                    "(MSE on embeddings + weighted loss of the frozen text head), then score zero-shot "
                    "classification and RGB<->MS retrieval.")
    _add_stage_arguments(p, "align")
    p.set_defaults(func=run_align)


def run_align(args: argparse.Namespace) -> int:
    from mtmg.alignment import run_alignment
    from mtmg.config import AlignConfig, load_config

    with _process_group(args.device) as device:
        result = run_alignment(load_config(args.config, AlignConfig), out_dir=args.out, device=device,
                               resume=args.resume)
    if result is None:  # a rank other than 0 under torchrun
        return 0
    table = result.results.pivot_table(index=["dataset", "split", "model", "modality"], columns="metric",
                                       values="value", sort=False)
    print((100 * table).round(2).to_string())
    print(f"outputs in {result.out_dir}")
    return 0


# --- shard ----------------------------------------------------------------------------------------------

def add_shard_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shard", help="convert splits of a multispectral dataset to WebDataset shards",
        description="Write each split of a multispectral dataset as WebDataset tar shards (13-band uint16 arrays "
                    "in SSL4EO order, labels, ids; class names and templates beside them). Read them back with "
                    "the dataset name 'shards' and the output folder as root.")
    p.add_argument("--dataset", required=True, help="dataset name in mtmg.datasets (e.g. bigearthnet19, sen12ms)")
    p.add_argument("--root", required=True, type=Path, help="dataset root folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (one per dataset)")
    p.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="split to convert; repeatable (default: train, val and test)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable or invalid files instead of stopping at the first one")
    p.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    from mtmg.datasets import write_shards

    options = {"on_error": "skip"} if args.skip_bad else {}
    for split in args.split or ["train", "val", "test"]:
        folder = write_shards(args.dataset, args.root, args.out, split, args.samples_per_shard, **options)
        count = (folder / "nsamples.txt").read_text().strip()
        print(f"{args.dataset}/{split}: {count} samples in {folder}")
    return 0

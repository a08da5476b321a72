"""``mtmg patch`` and ``mtmg align``: the two training stages from a YAML config."""
from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _add_stage_parser(subparsers: argparse._SubParsersAction, stage: str, help: str,
                      description: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(stage, help=help, description=description)
    p.add_argument("--config", required=True, type=Path,
                   help=f"YAML config (configs/default/{stage}.yaml: embedded default; configs/paper/{stage}.yaml)")
    p.add_argument("--out", type=Path,
                   help=f"a plain output folder (default: the config's out_dir, else the run store's folder "
                        f"runs/<profile>/{stage}/<key>, which the notebooks reuse)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true",
                   help="continue training from the last checkpoint in the output folder (refused when any "
                        "setting that shapes the result differs)")
    return p


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[str]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group, NCCL on CUDA and Gloo on the CPU, and
    yield this rank's device (``cuda:LOCAL_RANK`` on CUDA); otherwise yield ``device`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device
        return
    import torch
    import torch.distributed as dist

    from mtmg.core.device import resolve_device

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
    p = _add_stage_parser(
        subparsers, "patch", "stage 1: PAINT patching of CLIP's image tower on RGB composites",
        "Fine-tune CLIP's image tower through the frozen zero-shot head of the patching task, interpolate with "
        "the zero-shot weights for each alpha, choose alpha on validation splits (patching and supported tasks) "
        "and write the patched tower and a scores table.")
    p.set_defaults(func=run_patch)


def run_patch(args: argparse.Namespace) -> int:
    from mtmg.core.config import PatchConfig, load_config
    from mtmg.method import validation
    from mtmg.method.patching import run_patching

    cfg = load_config(args.config, PatchConfig)
    validation.check_patch_config(cfg, str(args.config))
    with _process_group(args.device) as device:
        result = run_patching(cfg, out_dir=args.out, device=device, resume=args.resume)
    if result is not None:  # None: a rank other than 0 under torchrun
        table = result.scores.pivot_table(index="alpha", columns=["task", "split"], values="value")
        print((100 * table).round(2).to_string())
        print(f"selected alpha (mean validation score): {result.alpha:g}; outputs in {result.out_dir}")
    return 0


def add_align_parser(subparsers: argparse._SubParsersAction) -> None:
    p = _add_stage_parser(
        subparsers, "align", "stage 2: align a 13-band Sentinel-2 student to the patched CLIP image tower",
        "Distil the patched image tower (teacher, RGB composites) into a multispectral student (MSE on "
        "embeddings + weighted loss of the frozen text head), then score zero-shot classification and "
        "RGB<->MS retrieval.")
    p.add_argument("--teacher", type=Path,
                   help="the stage 1 folder to distil (default: the config's teacher_dir, else the run store's "
                        "stage 1 folder of configs/<profile>/patch.yaml)")
    p.set_defaults(func=run_align)


def run_align(args: argparse.Namespace) -> int:
    from mtmg.core.config import AlignConfig, load_config
    from mtmg.method import validation
    from mtmg.method.alignment import run_alignment

    cfg = load_config(args.config, AlignConfig)
    validation.check_align_config(cfg, str(args.config))
    teacher = args.teacher or cfg.teacher_dir or _profile_teacher(cfg.profile)
    with _process_group(args.device) as device:
        result = run_alignment(cfg, teacher_dir=teacher, out_dir=args.out, device=device, resume=args.resume)
    if result is not None:  # None: a rank other than 0 under torchrun
        table = result.results.pivot_table(index=["dataset", "split", "model", "modality"], columns="metric",
                                           values="value", sort=False)
        print((100 * table).round(2).to_string())
        print(f"teacher {teacher}; outputs in {result.out_dir}")
    return 0


def _profile_teacher(profile: str) -> Path:
    """The run store's stage 1 folder of ``configs/<profile>/patch.yaml``."""
    from mtmg.core.config import PatchConfig, load_config
    from mtmg.method.patching import output_folder
    from mtmg.runs.profiles import profile_folder

    return output_folder(load_config(profile_folder(profile) / "patch.yaml", PatchConfig))

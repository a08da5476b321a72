"""GPU training-step throughput and peak memory of the paper profile (bf16 autocast, 224 px).

    .venv/bin/python benchmarks/bench_gpu.py [--batch 256] [--steps 10] [--warmup 3] [--no-compile]

Needs a CUDA device; without one it says so and exits 0 (``--cpu-smoke`` runs the same code on the
CPU at a tiny batch and size, to check it, and reports no rates worth reading).

For each step of ``configs/paper`` (see ``_paper.py``: the patching step, the alignment step with the
teacher-embedding cache as configured, and the alignment step recomputing the teacher) it reports
images per second at ``--batch`` with and without ``torch.compile``, FLOPs per image counted with
``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of one eager step), the achieved
TFLOP/s and their fraction of the card's dense bf16 peak (table below, or ``--peak-tflops``), and the
peak memory (``torch.cuda.max_memory_allocated`` since the model was built) at the batch sizes of the
paper profile (patch 128, align 256), next to the CPU estimate of ``bench_memory.py``.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass

import torch
from _common import footer, machine_header, table
from _paper import Step, align_step, optimizer, paper_configs, patch_step, train_step
from torch.utils.flop_counter import FlopCounterMode

from mtmg.core.device import autocast

GIB = 2**30
# Dense bf16 tensor-core peaks from the vendor data sheets (TFLOP/s, no sparsity); first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from :data:`PEAK_BF16_TFLOPS`, or None for an unknown card."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


@dataclass
class Row:
    step: str
    batch: int
    compiled: bool
    images_per_s: float
    ms_per_step: float
    first_step_s: float
    flops_per_image: float
    peak_gib: float | None


def count_flops(step: Step, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """FLOPs of one eager forward + backward pass of ``step`` on ``batch``.

    nn.MultiheadAttention's inference fast path (the frozen teacher) is one fused operator that the
    counter does not know; it is switched off while counting, which changes no arithmetic.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            with autocast(device):
                loss, _ = step.loss_fn(step.module, batch)
            loss.backward()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    step.module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(build, batch_size: int, compiled: bool, steps: int, warmup: int, device: torch.device,
            flops_cache: dict[tuple[str, int], int]) -> Row:
    """Build a step, count its FLOPs (once per step and batch), then time ``steps`` optimiser steps."""
    free(device)
    step: Step = build()
    batch = step.make_batch(batch_size)
    key = (step.name, batch_size)
    if key not in flops_cache:
        flops_cache[key] = count_flops(step, batch, device)
    if device.type == "cuda":
        free(device)
        torch.cuda.reset_peak_memory_stats(device)
    opt, params = optimizer(step)
    model = torch.compile(step.module) if compiled else step.module
    t = time.perf_counter()
    train_step(step, model, opt, params, batch, device)
    sync(device)
    first = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        train_step(step, model, opt, params, batch, device)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(step, model, opt, params, batch, device)
    sync(device)
    elapsed = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    row = Row(step.name, batch_size, compiled, batch_size * steps / elapsed, 1e3 * elapsed / steps, first,
              flops_cache[key] / batch_size, peak)
    del step, model, opt, params, batch
    if compiled:
        torch._dynamo.reset()
    free(device)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="batch size of the throughput rows (default 256)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-estimate", action="store_true", help="skip the CPU memory estimate (bench_memory)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card, TFLOP/s")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="without CUDA: run every row on the CPU at batch 2, 64 px, 1 step (checks the code only)")
    args = parser.parse_args(argv)
    print(machine_header("bench_gpu: paper-profile training steps, bf16 autocast"), flush=True)
    patch_cfg, align_cfg = paper_configs()

    if torch.cuda.is_available():
        device, size = torch.device("cuda"), None
        batch, steps, warmup, paper = args.batch, args.steps, args.warmup, True
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or peak_tflops(name)
        compile_modes = (False,) if args.no_compile else (False, True)
    elif args.cpu_smoke:
        device, size, batch, steps, warmup, paper = torch.device("cpu"), 64, 2, 1, 1, False
        name, peak, compile_modes = "CPU (smoke run, fp32: autocast is bf16 on CUDA only)", args.peak_tflops, (False,)
        torch.set_num_threads(1)
    else:
        print("no CUDA device: bench_gpu measures nothing on this machine. Run it on a machine with a CUDA GPU "
              "(or add --cpu-smoke to check the code path on the CPU).")
        print(footer())
        return 0

    builders = {
        "patch": lambda: patch_step(patch_cfg, device, size=size),
        "align_cache": lambda: align_step(align_cfg, device, cache=True, size=size),
        "align_teacher": lambda: align_step(align_cfg, device, cache=False, size=size),
    }
    plan = [("patch", batch, c) for c in compile_modes] + [("align_cache", batch, c) for c in compile_modes] + \
           [("align_teacher", batch, False)]
    if paper and patch_cfg.train.batch_size != batch:
        plan.append(("patch", patch_cfg.train.batch_size, False))
    if paper and align_cfg.train.batch_size != batch:
        plan.append(("align_cache", align_cfg.train.batch_size, False))
    flops: dict[tuple[str, int], int] = {}
    rows = []
    for key, b, compiled in plan:
        row = measure(builders[key], b, compiled, steps, warmup, device, flops)
        rows.append(row)
        print(f"  {row.step}, batch {b}, compile={compiled}: {row.images_per_s:.0f} img/s "
              f"(first step {row.first_step_s:.1f} s)", flush=True)

    print(f"device: {name}; dense bf16 peak: {f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}; "
          f"input {size or 224} px; {steps} timed steps after {warmup} warm-up steps")
    out = []
    for r in rows:
        tflops = r.flops_per_image * r.images_per_s / 1e12
        out.append((r.step, r.batch, "yes" if r.compiled else "no", f"{r.images_per_s:.0f}", f"{r.ms_per_step:.1f}",
                    f"{r.first_step_s:.1f}", f"{r.flops_per_image / 1e9:.1f}", f"{tflops:.1f}",
                    f"{tflops / peak:.1%}" if peak else "n/a",
                    f"{r.peak_gib:.2f}" if r.peak_gib is not None else "n/a"))
    print(table(["step", "batch", "compile", "img/s", "ms/step", "1st step s", "GFLOP/img", "TFLOP/s", "of peak",
                 "peak GiB"], out))
    by = {(r.step, r.batch, r.compiled): r for r in rows}
    for step_name in ("patch", "align (teacher cache)"):
        e, c = by.get((step_name, batch, False)), by.get((step_name, batch, True))
        if e and c:
            print(f"torch.compile speed-up, {step_name}: {c.images_per_s / e.images_per_s:.2f}x")
    e, t = by.get(("align (teacher cache)", batch, False)), by.get(("align (teacher recomputed)", batch, False))
    if e and t:
        print(f"teacher cache speed-up of the align step: {e.images_per_s / t.images_per_s:.2f}x")
    if device.type == "cuda" and not args.no_estimate:
        from bench_memory import estimate

        cpu = torch.device("cpu")
        for step, b in ((patch_step(patch_cfg, cpu), patch_cfg.train.batch_size),
                        (align_step(align_cfg, cpu, cache=align_cfg.teacher_cache), align_cfg.train.batch_size)):
            measured = by.get((step.name, b, False))
            est = estimate(step, b).total / GIB
            print(f"peak memory {step.name}, batch {b}: measured "
                  f"{measured.peak_gib:.2f} GiB, estimated {est:.2f} GiB (bench_memory)" if measured else
                  f"peak memory {step.name}, batch {b}: estimated {est:.2f} GiB (bench_memory)")
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

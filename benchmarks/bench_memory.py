"""Estimated peak device memory of a paper profile's training steps (configs/paper*), on the CPU.

    .venv/bin/python benchmarks/bench_memory.py [--profile paper|paper_vit_b16|paper_vit_l14] [--batches 1 2]

Estimate = weights of every module held on the device (fp32) + gradients of the trained parameters
(fp32) + AdamW's two moment buffers (fp32) + the batch tensors + the tensors autograd saves for the
backward pass. The saved tensors are counted, not guessed: the step's forward runs on the CPU under
bf16 autocast with ``torch.autograd.graph.saved_tensors_hooks`` at two small batch sizes, each storage
counted once, parameters and inputs left out; a line through the two counts gives a per-sample part and
a fixed part (autocast's bf16 copies of the weights), extrapolated to the paper batch size.
Everything is added as if alive at once, so the figure is an upper estimate; allocator fragmentation
and library workspaces (cuBLAS, attention kernels) are not included. CPU autocast and CUDA autocast
cast mostly the same operations (matrix products to bf16, layer norms kept in fp32 inputs), so the
activation count is close but not identical to a CUDA run; ``bench_gpu.py`` measures the real peak.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from _common import ROOT, footer, machine_header, setup_threads, table
from _paper import Step, align_step, param_bytes, patch_step

from mtmg.core.config import AlignConfig, PatchConfig, load_config

GIB = 2**30
CPU = torch.device("cpu")


def saved_bytes(step: Step, batch_size: int) -> int:
    """Bytes of the tensors autograd saves in one forward pass of ``step`` (bf16 CPU autocast)."""
    batch = step.make_batch(batch_size)
    exclude = {t.untyped_storage().data_ptr() for m in step.resident for t in [*m.parameters(), *m.buffers()]}
    exclude |= {t.untyped_storage().data_ptr() for t in batch.values()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = step.loss_fn(step.module, batch)
    del loss
    return sum(seen.values())


@dataclass(frozen=True)
class Estimate:
    """Memory components of a step at ``batch`` samples, in bytes."""

    name: str
    batch: int
    weights: int
    grads: int
    adamw: int
    inputs: int
    act_fixed: int
    act_per_sample: int

    @property
    def activations(self) -> int:
        return self.act_fixed + self.act_per_sample * self.batch

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.adamw + self.inputs + self.activations


def estimate(step: Step, batch: int, small: tuple[int, int] = (1, 2)) -> Estimate:
    """Components of the peak memory of ``step`` at ``batch`` samples (see the module docstring)."""
    b1, b2 = small
    s1, s2 = saved_bytes(step, b1), saved_bytes(step, b2)
    per_sample = (s2 - s1) // (b2 - b1)
    trainable = param_bytes([step.module], trainable=True)
    inputs = sum(t.numel() * t.element_size() for t in step.make_batch(batch).values())
    return Estimate(step.name, batch, param_bytes(step.resident), trainable, 2 * trainable, inputs,
                    max(0, s1 - per_sample * b1), per_sample)


def report(est: Estimate) -> str:
    rows = [
        ("weights on the device (fp32)", est.weights),
        ("gradients of trained parameters (fp32)", est.grads),
        ("AdamW exp_avg + exp_avg_sq (fp32)", est.adamw),
        ("batch tensors", est.inputs),
        (f"saved activations: {est.act_fixed / 2**20:.0f} MiB fixed + "
         f"{est.act_per_sample / 2**20:.1f} MiB/sample x {est.batch}", est.activations),
        ("total (estimated, upper)", est.total),
    ]
    return table([f"{est.name}, batch {est.batch}", "GiB"], [(k, f"{v / GIB:.2f}") for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs=2, default=(1, 2), help="the two small batch sizes counted")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--profile", default="paper", help="a profile folder under configs/ (default paper)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    print(machine_header(f"bench_memory: estimated peak memory of the {args.profile} profile's steps"), flush=True)
    folder = ROOT / "configs" / args.profile
    patch_cfg = load_config(folder / "patch.yaml", PatchConfig)
    align_cfg = load_config(folder / "align.yaml", AlignConfig)
    steps = [(patch_step(patch_cfg, CPU), patch_cfg.train.batch_size),
             (align_step(align_cfg, CPU, cache=align_cfg.teacher_cache, clip=patch_cfg.clip),
              align_cfg.train.batch_size)]
    for step, batch in steps:
        print(report(estimate(step, batch, tuple(args.batches))), flush=True)
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

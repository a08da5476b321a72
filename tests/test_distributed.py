"""Data-parallel training: two Gloo processes on the CPU reach the weights of one process with the same
global batch, and each rank sees its own slice of every global batch."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mtmg.core.config import TrainConfig
from mtmg.method.training import fit

# 21 items in batches of 8: the last batch of each epoch (5 items) splits unevenly, 2 + 3.
# A large eps makes Adam's step depend on the gradient's scale, so a sum over ranks instead of a mean shows.
CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, eps=0.1, grad_clip=None, checkpoint_every=3)


class _Toy(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(21, 4, generator=g), torch.randn(21, 2, generator=g)

    def __len__(self) -> int:
        return 21

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def _train(out_dir, seen: list) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def loss_fn(m, batch):
        seen.append(batch["index"].tolist())
        return nn.functional.mse_loss(m(batch["x"]), batch["y"]), {}

    fit(model, loss_fn, _Toy(), CFG, out_dir)
    return model


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        seen: list = []
        model = _train(f"{tmp}/ddp", seen)
        torch.save(model.state_dict(), f"{tmp}/weights{rank}.pt")
        with open(f"{tmp}/seen{rank}.json", "w") as f:
            json.dump(seen, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    seen: list = []
    reference = _train(tmp_path / "single", seen).state_dict()
    processes = mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=False)
    for _ in range(60):
        if processes.join(timeout=1):
            break
    else:
        for p in processes.processes:
            p.kill()
        pytest.fail("the two processes did not finish within 60 s")

    slices = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    assert [a + b for a, b in zip(*slices)] == seen  # disjoint slices of the single-process batches
    assert [len(b) for b in slices[0]][:4] == [4, 4, 2, 4]
    for rank in range(2):
        weights = torch.load(tmp_path / f"weights{rank}.pt")
        for k, v in reference.items():
            torch.testing.assert_close(weights[k], v, atol=1e-6, rtol=0)
    logs = [pd.read_csv(tmp_path / run / "train_log.csv") for run in ("single", "ddp")]
    assert len(logs[1]) == 6  # written once, by rank 0
    np.testing.assert_allclose(logs[1]["loss"], logs[0]["loss"], atol=1e-6)  # global means
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["step"] == 6

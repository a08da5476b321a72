"""Zero-shot evaluation throughput through mtmg against a bare open_clip forward on the same tensors.

    .venv/bin/python benchmarks/bench_eval.py [--samples 16] [--batch 8] [--rounds 6]

Model: open_clip ViT-B-32 at 224 px with random weights (``mtmg.models.clip.load_clip("ViT-B-32", None)``)
and the EuroSAT zero-shot head built by ``mtmg.models.zeroshot.build_zeroshot_head``. Inputs: the first
``--samples`` tiles of the shipped EuroSAT-MS test split, preprocessed once by the bundle's
``preprocess_val`` and held in memory, served by one ``DataLoader`` that every contender iterates:

* bare: ``model.encode_image`` -> L2 normalisation -> ``logit_scale * f @ W.T`` -> top-1;
* ``mtmg.evaluation.scoring.evaluate_zeroshot`` on ``ImageClassifier(model.visual, head)``;
* ``mtmg.evaluation.embeddings.extract_embeddings`` on ``model.visual``, then the head.

The logits of the contenders are checked to agree before timing. Overhead = bare rate / mtmg rate - 1,
from the medians over rounds (and from the best rounds). On a loaded machine the round-to-round noise
of a ViT-B-32 pass is larger than 5 %, so the script also measures the fixed per-batch cost of each
path with a trivial encoder (mean-pool + linear, same loader, many rounds) and states it as a share
of a ViT-B-32 batch: that is the overhead the library adds, free of the model's timing noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import ROOT, footer, interleaved, machine_header, setup_threads, spread, table
from torch import nn
from torch.utils.data import DataLoader

from mtmg.data import prompts
from mtmg.data.datasets import DatasetSubset, get_dataset
from mtmg.evaluation.embeddings import extract_embeddings
from mtmg.evaluation.scoring import evaluate_zeroshot
from mtmg.method.training import InMemoryDataset
from mtmg.models.clip import ImageClassifier, ZeroShotHead, load_clip
from mtmg.models.zeroshot import build_zeroshot_head

EUROSAT = ROOT / "data" / "eurosat_ms_sample"
BARE = "bare open_clip (encode_image, normalise, matmul)"
EVAL = "mtmg evaluate_zeroshot(ImageClassifier)"
EMBED = "mtmg extract_embeddings + head"
LOADER = "DataLoader alone (no model)"


@torch.no_grad()
def bare_logits(encode, head_weight: torch.Tensor, scale: torch.Tensor, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot logits written out by hand: ``encode`` -> L2 normalisation -> scaled matmul."""
    logits, targets = [], []
    for batch in loader:
        f = F.normalize(encode(batch["rgb"]), dim=-1)
        logits.append(scale * f @ head_weight.T)
        targets.append(batch["target"])
    return torch.cat(logits), torch.cat(targets)


def contenders(encode, encoder: nn.Module, head: ZeroShotHead, loader) -> dict[str, Callable[[], int]]:
    """Bare path and the two mtmg paths over ``loader``; each returns the number of images."""
    classifier = ImageClassifier(encoder, head)

    def bare() -> int:
        logits, targets = bare_logits(encode, head.weight, head.logit_scale, loader)
        (logits.argmax(1) == targets).float().mean().item()
        return len(targets)

    def mtmg_eval() -> int:
        return evaluate_zeroshot(classifier, loader, "rgb", False, "cpu")["n_samples"]

    def mtmg_embed() -> int:
        emb, targets = extract_embeddings(encoder, loader, "rgb", "cpu")
        with torch.no_grad():
            (head(emb).argmax(1) == targets).float().mean().item()
        return len(targets)

    return {BARE: bare, EVAL: mtmg_eval, EMBED: mtmg_embed}


def check_same(encode, encoder: nn.Module, head: ZeroShotHead, loader) -> None:
    """Both mtmg paths give the bare path's logits and top-1."""
    ref, targets = bare_logits(encode, head.weight, head.logit_scale, loader)
    with torch.no_grad():
        emb, _ = extract_embeddings(encoder, loader, "rgb", "cpu")
        ours = head(emb)
    if not torch.allclose(ref, ours, atol=1e-3, rtol=1e-4):
        raise RuntimeError(f"mtmg and bare logits differ (max {float((ref - ours).abs().max()):.2e})")
    top1 = evaluate_zeroshot(ImageClassifier(encoder, head), loader, "rgb", False, "cpu")["top1"]
    if abs(top1 - float((ref.argmax(1) == targets).float().mean())) > 1e-6:
        raise RuntimeError("evaluate_zeroshot's top-1 differs from the bare computation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=16, help="test tiles (default 16, at most 50)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--rounds", type=int, default=6, help="timed passes per contender (default 6)")
    parser.add_argument("--fixed-rounds", type=int, default=200,
                        help="timed passes per contender with the trivial encoder (default 200)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; see benchmarks/README.md on threads under load)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    print(machine_header("bench_eval: zero-shot evaluation, mtmg vs bare open_clip"), flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bundle = load_clip("ViT-B-32", None)
    model = bundle.model.eval()
    head = build_zeroshot_head(bundle, None, prompts.classnames("eurosat"), prompts.templates("eurosat"))
    test = get_dataset("eurosat_ms", EUROSAT, "test", rgb_transform=bundle.preprocess_val)
    if args.samples > len(test):
        raise ValueError(f"--samples {args.samples}: the shipped test split has {len(test)} tiles")
    data = InMemoryDataset(DatasetSubset(test, list(range(args.samples))), ("rgb", "target"), desc="tiles")
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    batches = len(loader)
    trivial = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, head.weight.shape[1])).eval()

    check_same(model.encode_image, model.visual, head, loader)
    check_same(trivial, trivial, head, loader)
    runs = contenders(model.encode_image, model.visual, head, loader)
    runs[LOADER] = lambda: sum(len(b["target"]) for b in loader)
    rates = interleaved(runs, args.rounds)
    fixed = interleaved(contenders(trivial, trivial, head, loader), args.fixed_rounds)

    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    rows = [(k, spread(v), "" if k == LOADER else f"{med[BARE] / med[k] - 1:+.1%}",
             "" if k == LOADER else f"{best[BARE] / best[k] - 1:+.1%}") for k, v in rates.items()]
    print(f"{args.samples} EuroSAT-MS test tiles at 224 px, batch {args.batch}, {args.rounds} rounds; "
          f"ViT-B-32 random weights, CPU fp32, logits checked equal")
    print(table(["path", "images/s median [range]", "overhead (median)", "overhead (best)"], rows))

    ms_batch = {k: 1e3 * args.samples / statistics.median(v) / batches for k, v in fixed.items()}
    vit_ms = 1e3 * args.samples / med[BARE] / batches
    rows = [(k, f"{ms_batch[k]:.3f}", f"{ms_batch[k] - ms_batch[BARE]:+.3f}",
             f"{(ms_batch[k] - ms_batch[BARE]) / vit_ms:+.2%}") for k in fixed]
    print(f"fixed cost per batch, same loader with a trivial encoder (mean-pool + linear), {args.fixed_rounds} "
          f"rounds; as a share of a ViT-B-32 batch ({vit_ms:.0f} ms, bare median)")
    print(table(["path", "ms/batch (median)", "extra ms/batch", "of a ViT-B-32 batch"], rows))
    worst_med = max(med[BARE] / med[k] - 1 for k in (EVAL, EMBED))
    worst_fixed = max(ms_batch[k] - ms_batch[BARE] for k in (EVAL, EMBED)) / vit_ms
    print(f"mtmg overhead over bare open_clip: {worst_med:+.1%} end to end (medians, machine noise included), "
          f"{worst_fixed:+.2%} from the per-batch fixed cost; target <= 5%")
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())

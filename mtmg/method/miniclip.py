"""MiniCLIP: a small open_clip CLIP pretrained contrastively from scratch on procedural scenes.

It stands in for a pretrained CLIP where none can be downloaded (the embedded default profile).
The architecture is the registered open_clip config ``MiniCLIP-64`` (``mtmg/model_configs``); the
data are the captioned scenes of :mod:`mtmg.data.synthetic`. The weights are a plain state dict that
``open_clip.create_model_and_transforms("MiniCLIP-64", pretrained=path)`` loads, keyed by a hash of
the training config, the generator version and the model config.

The weights for the default config ship in ``data/miniclip`` (float16, with their pretraining log);
:func:`ensure_miniclip` returns them when the requested config has their key and pretrains into the
cache otherwise. Regenerate from scratch with ``python -m mtmg.method.miniclip --out PATH``; the learning
checks do so and compare the result with the shipped file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.transformer import text_global_pool
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtmg.core import checkpoint, paths
from mtmg.core.device import autocast, resolve_device
from mtmg.data import prompts, synthetic
from mtmg.data.datasets import get_dataset
from mtmg.evaluation.scoring import evaluate_zeroshot
from mtmg.method.training import warmup_cosine
from mtmg.models.clip import ClipBundle, ImageClassifier, load_clip, register_model_config
from mtmg.models.zeroshot import build_zeroshot_head

MODEL_NAME = "MiniCLIP-64"
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
SHIPPED_DIR = paths.DATA_DIR / "miniclip"
FP16_TOLERANCE = 0.01
"""Largest zero-shot top-1 change (synthetic task, EuroSAT) for which the weights ship in float16."""


@dataclass(frozen=True)
class MiniClipConfig:
    """Pretraining settings; the defaults are the feasibility study's.

    ``seed`` drives the initialisation, batch order and flips; ``data_seed`` the rendered scenes.
    With the defaults, rendering takes about 40 s and the 480 steps about 4.5 min of CPU time.
    """

    model_name: str = MODEL_NAME
    num_scenes: int = 16_000
    data_seed: int = 0
    batch_size: int = 64
    steps: int = 480
    lr: float = 1e-3
    warmup_steps: int = 48
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 0

    def cache_key(self) -> str:
        """Hash of the config, the scene generator version and the model's JSON config."""
        payload = json.dumps({"config": asdict(self), "generator": synthetic.GENERATOR_VERSION,
                              "model": _model_config_text(self.model_name)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _model_config_text(model_name: str) -> str:
    path = MODEL_CONFIG_DIR / f"{model_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} not found; MiniCLIP configs live in {MODEL_CONFIG_DIR}")
    return path.read_text()


def encode_text(model: open_clip.CLIP, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text`` on tokens truncated after the batch's last end-of-text token.

    Exact for causal-mask models pooled at the end-of-text token (the token with the largest id):
    positions after it never influence the pooled feature. Saves most of the text cost on short captions.
    """
    if model.attn_mask is None or model.text_pool_type != "argmax":
        raise ValueError("truncated text encoding needs a causal mask and argmax (end-of-text) pooling; "
                         f"this model has pool type {model.text_pool_type!r}; use model.encode_text instead")
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type)
    x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def _optimizer(model: nn.Module, config: MiniClipConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=config.betas, eps=config.eps)


def _render(config: MiniClipConfig, tokenizer: Callable[[list[str]], torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """All pretraining scenes as a uint8 (N, 3, 64, 64) tensor and their tokenised captions.

    Large sets are rendered by worker processes, one per CPU core; scenes are pure functions of
    their index, so the result does not depend on the number of workers.
    """
    data = synthetic.SyntheticCaptions(config.num_scenes, seed=config.data_seed)
    workers = min(os.cpu_count() or 1, 8) if len(data) >= 2048 else 0
    loader = DataLoader(data, batch_size=256, num_workers=workers)
    images, captions = [], []
    for batch_images, batch_captions in tqdm(loader, desc="rendering scenes", mininterval=2):
        images.append(batch_images)
        captions.extend(batch_captions)
    return torch.cat(images), tokenizer(captions)


def _normalizer(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B, 3, H, W) -> normalised float, as the model's own preprocessing does."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return lambda x: (x.to(device, torch.float32) / 255 - mean) / std


def pretrain_miniclip(config: MiniClipConfig, out_path: str | os.PathLike,
                      device: str | torch.device = "cpu") -> Path:
    """Pretrain MiniCLIP on synthetic captions; write its state dict (and a ``.json`` log) atomically.

    Deterministic for a given config and device. Returns ``out_path``.
    """
    out_path, device = Path(out_path), resolve_device(device)
    register_model_config(MODEL_CONFIG_DIR)
    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.model_name, device=device)
    tokenizer = open_clip.get_tokenizer(config.model_name)
    start = time.perf_counter()
    images, tokens = _render(config, tokenizer)
    render_s = time.perf_counter() - start

    generator = torch.Generator().manual_seed(config.seed)
    epochs = math.ceil(config.steps * config.batch_size / config.num_scenes)
    order = torch.cat([torch.randperm(config.num_scenes, generator=generator) for _ in range(epochs)])
    flips = torch.rand(config.steps * config.batch_size, generator=generator) < 0.5
    normalize = _normalizer(model, device)
    loss_fn = ClipLoss()
    optimizer = _optimizer(model, config)
    max_log_scale = math.log(100)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(config.steps), desc="pretraining MiniCLIP")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warmup_cosine(step, config.warmup_steps, config.steps)
        sl = slice(step * config.batch_size, (step + 1) * config.batch_size)
        batch = images[order[sl]]
        batch = torch.where(flips[sl].view(-1, 1, 1, 1), batch.flip(-1), batch)
        with autocast(device):
            image_features = model.encode_image(normalize(batch), normalize=True)
            text_features = encode_text(model, tokens[order[sl]].to(device), normalize=True)
            loss = loss_fn(image_features.float(), text_features.float(), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint.atomic_save(state, out_path)
    log = {"config": asdict(config), "generator_version": synthetic.GENERATOR_VERSION,
           "cache_key": config.cache_key(), "device": str(device), "torch_threads": torch.get_num_threads(),
           "render_seconds": round(render_s, 1),
           "train_seconds": round(time.perf_counter() - start - render_s, 1), "losses": losses}
    checkpoint.atomic_write_text(out_path.with_suffix(".json"), json.dumps(log, indent=2))
    return out_path


def _file_name(config: MiniClipConfig) -> str:
    return f"{config.model_name}-{config.cache_key()}.pt"


def miniclip_path(cache_dir: str | os.PathLike, config: MiniClipConfig = MiniClipConfig()) -> Path:
    """Where :func:`ensure_miniclip` keeps the weights for ``config`` when it has to pretrain them."""
    return Path(cache_dir) / "miniclip" / _file_name(config)


def shipped_weights(config: MiniClipConfig = MiniClipConfig()) -> Path | None:
    """The weights shipped in ``data/miniclip`` for ``config`` (same cache key), or None."""
    path = SHIPPED_DIR / _file_name(config)
    return path if path.is_file() else None


def shipped_pretraining_log(config: MiniClipConfig = MiniClipConfig()) -> pd.DataFrame:
    """The pretraining log of the shipped weights: one row per step with ``step``, ``lr`` and ``loss``."""
    path = (SHIPPED_DIR / _file_name(config)).with_suffix(".csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shipped pretraining log for this MiniClipConfig (cache key "
                                f"{config.cache_key()}); only the default settings ship, see {SHIPPED_DIR}/README.md")
    return pd.read_csv(path)


def ensure_miniclip(cache_dir: str | os.PathLike, config: MiniClipConfig = MiniClipConfig(),
                    device: str | torch.device = "cpu") -> Path:
    """Path of MiniCLIP weights for ``config``: the shipped file when its cache key matches, else the
    cache entry, pretrained first if it is missing."""
    shipped = shipped_weights(config)
    if shipped is not None:
        return shipped
    path = miniclip_path(cache_dir, config)
    if not path.is_file():
        pretrain_miniclip(config, path, device)
    return path


def supported_task_accuracy(bundle: ClipBundle, split: str = "test", num_samples: int | None = None,
                            batch_size: int = 250) -> float:
    """Zero-shot top-1 accuracy of ``bundle`` on the supported task (held-out synthetic scenes, 10 classes)."""
    data = synthetic.SyntheticScenes(split, rgb_transform=bundle.preprocess_val, num_samples=num_samples)
    head = build_zeroshot_head(bundle, None, data.classes, synthetic.SUPPORTED_TEMPLATES)
    classifier = ImageClassifier(bundle.model.visual, head)
    result = evaluate_zeroshot(classifier, DataLoader(data, batch_size=batch_size), desc="supported task")
    return float(result["top1"])


def eurosat_accuracy(bundle: ClipBundle, split: str = "all", batch_size: int = 250) -> float:
    """Zero-shot top-1 accuracy of ``bundle`` on the RGB composites of the shipped EuroSAT-MS tiles."""
    data = get_dataset("eurosat_ms", paths.DATA_DIR / "eurosat_ms_sample", split, rgb_transform=bundle.preprocess_val)
    head = build_zeroshot_head(bundle, None, prompts.classnames("eurosat"), prompts.templates("eurosat"))
    classifier = ImageClassifier(bundle.model.visual, head)
    result = evaluate_zeroshot(classifier, DataLoader(data, batch_size=batch_size), desc="EuroSAT zero-shot")
    return float(result["top1"])


def zeroshot_accuracies(weights: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, float]:
    """Zero-shot top-1 of MiniCLIP ``weights``: ``synthetic`` (1,000 held-out scenes) and ``eurosat``
    (the 200 shipped EuroSAT-MS tiles, RGB composites)."""
    register_model_config(MODEL_CONFIG_DIR)
    bundle = load_clip(MODEL_NAME, weights, device)
    return {"synthetic": supported_task_accuracy(bundle), "eurosat": eurosat_accuracy(bundle)}


def ship(out_dir: str | os.PathLike, cache_dir: str | os.PathLike, config: MiniClipConfig = MiniClipConfig(),
         device: str | torch.device = "cpu", tolerance: float = FP16_TOLERANCE) -> Path:
    """Write the weights for ``config`` into ``out_dir`` as they ship: float16 when the zero-shot accuracies
    of the float16 copy stay within ``tolerance`` of float32 on both tasks (else float32), the pretraining
    log as CSV (step, lr, loss) and a JSON record of the config, timings and accuracies.

    The float32 weights come from the cache (pretrained first if missing). Returns the weights file.
    """
    source = miniclip_path(cache_dir, config)
    if not source.is_file():
        pretrain_miniclip(config, source, device)
    record = json.loads(source.with_suffix(".json").read_text())
    losses = record.pop("losses")
    state = torch.load(source, weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out_dir = Path(out_dir)
    target = out_dir / _file_name(config)
    checkpoint.atomic_save(half, target)
    record["zeroshot_top1"] = {"float32": zeroshot_accuracies(source, device),
                               "float16": zeroshot_accuracies(target, device)}
    worst = max(abs(record["zeroshot_top1"]["float16"][k] - record["zeroshot_top1"]["float32"][k])
                for k in record["zeroshot_top1"]["float32"])
    record["stored_dtype"] = "float16" if worst <= tolerance else "float32"
    if worst > tolerance:
        checkpoint.atomic_save(state, target)
    steps = range(config.steps)
    log = pd.DataFrame({"step": [s + 1 for s in steps],
                        "lr": [config.lr * warmup_cosine(s, config.warmup_steps, config.steps) for s in steps],
                        "loss": losses})
    checkpoint.atomic_write_text(target.with_suffix(".csv"), log.to_csv(index=False, float_format="%.6g"))
    checkpoint.atomic_write_text(target.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """Pretrain MiniCLIP (or reuse the shipped or cached weights) and report its zero-shot accuracies."""
    parser = argparse.ArgumentParser(prog="python -m mtmg.method.miniclip", description=main.__doc__)
    parser.add_argument("--out", type=Path, help="pretrain from scratch into this weights file (default: reuse the "
                                                 "shipped weights or the cache entry)")
    parser.add_argument("--ship", type=Path, metavar="DIR",
                        help="write the weights as they ship into DIR: float16 if its zero-shot accuracies stay within "
                             f"{FP16_TOLERANCE:.0%} of float32, with the pretraining log (CSV) and a JSON record")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: paths.cache_dir())")
    parser.add_argument("--steps", type=int, default=MiniClipConfig.steps,
                        help="optimiser steps (warm-up: 48 steps, or a tenth of the steps if fewer than 480)")
    parser.add_argument("--batch-size", type=int, default=MiniClipConfig.batch_size)
    parser.add_argument("--seed", type=int, default=MiniClipConfig.seed)
    parser.add_argument("--device", default="cpu", help="cpu (default, reproducible), cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_model_config(MODEL_CONFIG_DIR)
    config = MiniClipConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            warmup_steps=min(MiniClipConfig.warmup_steps, args.steps // 10 or 1))
    cache = args.cache_dir or paths.cache_dir()
    if args.ship is not None:
        path = ship(args.ship, cache, config, args.device)
        print(f"shipped {path}\n{path.with_suffix('.json').read_text()}")
        return
    if args.out is not None:
        path = pretrain_miniclip(config, args.out, args.device)
    else:
        path = ensure_miniclip(cache, config, args.device)
    acc = zeroshot_accuracies(path, args.device)
    print(f"MiniCLIP weights: {path}\nzero-shot top-1: supported task (synthetic) {acc['synthetic']:.3f}, "
          f"EuroSAT (200 shipped tiles) {acc['eurosat']:.3f}")


if __name__ == "__main__":
    main()

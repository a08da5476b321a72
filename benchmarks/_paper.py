"""The two training steps of the paper profile (configs/paper), built from the library's parts with
random weights and synthetic batches, for step timing and memory accounting.

* patch: the whole CLIP model on the device (as ``mtmg.method.patching.run_patching`` loads it), its image
  tower trained through a frozen zero-shot head with ``mtmg.method.losses.task_loss`` (the loss of
  ``mtmg.method.patching.finetune``);
* align: the whole CLIP model on the device (``mtmg.method.patching.load_patched``), its image tower as the
  frozen teacher, the student of ``mtmg.models.student.build_student`` and the loss of
  ``mtmg.method.alignment.make_loss``, with the teacher-embedding cache (paper setting) or without it.

:func:`train_step` repeats the body of the loop in ``mtmg.method.training.fit``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import open_clip
import torch
from _common import ROOT
from torch import nn

from mtmg.core.config import AlignConfig, ClipSpec, PatchConfig, TrainConfig, load_config
from mtmg.core.device import autocast
from mtmg.data import prompts
from mtmg.data.datasets import dataset_class
from mtmg.method.alignment import make_loss
from mtmg.method.losses import task_loss
from mtmg.models.clip import ZeroShotHead
from mtmg.models.student import build_student

PATCH_YAML = ROOT / "configs" / "paper" / "patch.yaml"
ALIGN_YAML = ROOT / "configs" / "paper" / "align.yaml"
CACHE_ITEMS = 4096


def paper_configs() -> tuple[PatchConfig, AlignConfig]:
    """The paper profile's two stage configs."""
    return load_config(PATCH_YAML, PatchConfig), load_config(ALIGN_YAML, AlignConfig)


@dataclass
class Step:
    """A training step: the trained module, every module held on the device, its loss and a batch maker."""

    name: str
    module: nn.Module
    resident: list[nn.Module]
    loss_fn: Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]
    make_batch: Callable[[int], dict[str, torch.Tensor]]
    train: TrainConfig
    size: int


def _clip(name: str, pretrained: str | None, size: int | None, device: torch.device) -> nn.Module:
    """The open_clip model of a ClipSpec with random weights; QuickGELU where the named weights use it."""
    tag = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(tag.get("quick_gelu", False))}
    if size is not None:
        kwargs["force_image_size"] = size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(name, pretrained=None, device=device, **kwargs).eval()


def _head(prompt_key: str, dim: int, device: torch.device) -> ZeroShotHead:
    n = len(prompts.classnames(prompt_key))
    weight = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    return ZeroShotHead(weight, 100.0).to(device).requires_grad_(False)


def _image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def patch_step(cfg: PatchConfig, device: torch.device, size: int | None = None) -> Step:
    """Stage 1 step of ``cfg`` (image tower trained, the rest of CLIP frozen on the device)."""
    torch.manual_seed(0)
    model = _clip(cfg.clip.name, cfg.clip.pretrained, size, device)
    visual = model.visual
    model.requires_grad_(False)
    visual.requires_grad_(True).train()
    multilabel = bool(dataset_class(cfg.task.name).multilabel)
    head = _head(cfg.task.prompt_key or cfg.task.name, model.text_projection.shape[1], device)
    side = _image_size(visual)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return task_loss(multilabel, head(m(batch["rgb"])), batch["target"]), {}

    def make_batch(b: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(b)
        target = (torch.rand(b, head.num_classes, generator=g) < 0.2).float() if multilabel else \
            torch.randint(head.num_classes, (b,), generator=g)
        return {"rgb": torch.randn(b, 3, side, side, generator=g).to(device), "target": target.to(device)}

    return Step("patch", visual, [model], loss_fn, make_batch, cfg.train, side)


def align_step(cfg: AlignConfig, device: torch.device, *, cache: bool = True, size: int | None = None,
               clip: ClipSpec | None = None) -> Step:
    """Stage 2 step of ``cfg``: the student trained against the frozen ViT tower (cached or recomputed) of
    ``clip`` (default: the paper profile's CLIP)."""
    clip = clip or paper_configs()[0].clip
    torch.manual_seed(0)
    model = _clip(clip.name, clip.pretrained, size, device)
    model.requires_grad_(False)
    teacher = model.visual.eval()
    dim = model.text_projection.shape[1]
    side = size or cfg.ms_size or _image_size(teacher)
    overrides = {**cfg.student.overrides, **({"img_size": side} if side != 224 else {})}
    student_cfg = replace(cfg.student, weights=None, overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = build_student(student_cfg, dim).to(device).train()
    multilabel = bool(dataset_class(cfg.data.name).multilabel)
    head = _head(cfg.data.prompt_key or cfg.data.name, dim, device)
    table = torch.randn(CACHE_ITEMS, 1, dim, generator=torch.Generator().manual_seed(1)) if cache else None
    loss_fn = make_loss(teacher, head, multilabel, kind=cfg.feature_loss, cls_weight=cfg.cls_weight, cache=table)
    rgb_side = _image_size(teacher)

    def make_batch(b: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(b)
        target = (torch.rand(b, head.num_classes, generator=g) < 0.2).float() if multilabel else \
            torch.randint(head.num_classes, (b,), generator=g)
        return {"ms": torch.rand(b, student_cfg.in_chans, side, side, generator=g).to(device),
                "rgb": torch.randn(b, 3, rgb_side, rgb_side, generator=g).to(device),
                "target": target.to(device), "index": (torch.arange(b) % CACHE_ITEMS).to(device)}

    name = "align (teacher cache)" if cache else "align (teacher recomputed)"
    return Step(name, student, [model, student], loss_fn, make_batch, cfg.train, side)


def optimizer(step: Step) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the trainable parameters, as ``mtmg.method.training.fit`` builds it."""
    params = [p for p in step.module.parameters() if p.requires_grad]
    t = step.train
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay), params


def train_step(step: Step, model: nn.Module, opt: torch.optim.Optimizer, params: list[nn.Parameter],
               batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """One optimiser step, as in the loop of ``mtmg.method.training.fit`` (without scheduler and log)."""
    with autocast(device):
        loss, _ = step.loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{step.name}: loss is {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, step.train.grad_clip or math.inf)
    opt.step()
    return loss.item()


def param_bytes(modules: list[nn.Module], trainable: bool | None = None) -> int:
    """Bytes of the (trainable / frozen / all) parameters and buffers of ``modules``, shared ones once."""
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            if trainable is None or p.requires_grad == trainable:
                seen[p.data_ptr()] = p.numel() * p.element_size()
        if trainable is not True:
            for b in m.buffers():
                seen[b.data_ptr()] = b.numel() * b.element_size()
    return sum(seen.values())

"""The probe stage: linear probes of a profile's four encoders on the same tiles of its datasets.

:func:`run_probe` compares the aligned student on the MS view, patched and zero-shot CLIP on the RGB
composite and the student's initial weights (the "before alignment" baseline) with
:func:`mtmg.evaluation.probe.few_shot_curve`, and writes the fits, their test scores and the student's
gain over its initial weights (:func:`mtmg.evaluation.probe.difference_table`); :class:`ProbeRun` reads
a finished folder back.
"""
from __future__ import annotations

import dataclasses
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mtmg.core import checkpoint, runstore
from mtmg.core.config import ProbeConfig
from mtmg.core.device import resolve_device
from mtmg.data.sentinel2 import evaluation_spec, read_band_metadata
from mtmg.data.tasks import held_out, ms_resize, training_split
from mtmg.evaluation import baselines
from mtmg.evaluation.embeddings import embed
from mtmg.evaluation.probe import (
    DIFFERENCES_FILE,
    ENCODERS,
    SCORES_FILE,
    Split,
    difference_table,
    few_shot_curve,
    load_differences,
    scores_name,
)
from mtmg.method.alignment import load_student
from mtmg.method.patching import load_patched
from mtmg.models.clip import tower_copy
from mtmg.models.student import build_student
from mtmg.runs.profiles import Profile

RESULTS_FILE = "results.csv"
BASELINES_FILE = "baselines.csv"
"""The band-statistics baseline and every encoder under CLIP_benchmark's protocol (:mod:`mtmg.evaluation.baselines`)."""
FILES = (RESULTS_FILE, SCORES_FILE, DIFFERENCES_FILE, BASELINES_FILE)
"""The files a finished probe folder holds."""


@dataclass(frozen=True)
class ProbeRun:
    """A finished probe folder: one row per fit (``results``), the student's gain over its initial weights
    with paired-bootstrap intervals (``differences``) and the folder."""

    out_dir: Path
    results: pd.DataFrame
    differences: pd.DataFrame
    baselines: pd.DataFrame

    @classmethod
    def load(cls, folder: str | Path) -> ProbeRun:
        """Read a finished probe folder."""
        folder = Path(folder)
        return cls(folder, pd.read_csv(folder / RESULTS_FILE), load_differences(folder),
                   pd.read_csv(folder / BASELINES_FILE))


def load_probe_config(prof: Profile) -> ProbeConfig:
    """The profile's probe config (``prof.probe``, as :func:`mtmg.runs.profiles.load_profile` read it from
    ``probe.yaml``; ``datasets`` default to the alignment evaluation sets), with the profile's data roots
    applied to datasets of the same name."""
    cfg = prof.probe
    roots = {s.name: s for s in (*prof.align.eval_sets, prof.align.data)}
    datasets = tuple(dataclasses.replace(s, root=roots[s.name].root) if s.name in roots else s
                     for s in cfg.datasets) or tuple(prof.align.eval_sets)
    return dataclasses.replace(cfg, datasets=datasets)


def probe_key(cfg: ProbeConfig, prof: Profile, patch_key: str, align_key: str) -> str:
    """Run-store key of the probe: its config, the MS view size, the stage 1 and 2 folders it reads, the data."""
    settings = {"probe": dataclasses.asdict(cfg), "ms_size": prof.align.ms_size, "carve": prof.align.carve,
                "threads": prof.threads}
    return runstore.stage_key("probe", settings, upstream=(patch_key, align_key), data=cfg.datasets)


def initial_student(prof: Profile, out_dim: int) -> nn.Module:
    """The student as stage 2 built it before training: the configured weights and the projection drawn
    after ``torch.manual_seed(align.train.seed)``."""
    torch.manual_seed(prof.align.train.seed)
    return build_student(prof.align.student, out_dim)


def run_probe(prof: Profile, patch_dir: Path, align_dir: Path, out_dir: Path, cfg: ProbeConfig | None = None
              ) -> ProbeRun:
    """Embed train, validation and test splits of every dataset of ``cfg`` with the four encoders of
    :data:`mtmg.evaluation.probe.ENCODERS` (patched and zero-shot towers of ``patch_dir``, the student of
    ``align_dir`` and its initial weights) and run :func:`few_shot_curve` for each; writes ``results.csv``
    (one row per fit), ``test_scores.npz`` (every fit's test scores and each dataset's test targets, see
    :func:`mtmg.evaluation.probe.load_test_scores`), ``differences.csv`` (``cfg.bootstrap`` resamples) and
    ``baselines.csv`` (:func:`mtmg.evaluation.baselines.baseline_rows`: the band statistics of the MS view
    under the same probe, and every encoder under CLIP_benchmark's protocol)."""
    cfg = cfg or load_probe_config(prof)
    dev = resolve_device(prof.device)
    bundle, _ = load_patched(patch_dir, dev, prof.cache)
    patched = bundle.model.visual.eval()
    zeroshot = tower_copy(patched, checkpoint.load(patch_dir / "zeroshot.pt"))
    student = load_student(align_dir, prof.align.student)
    with warnings.catch_warnings():  # no pretrained student weights at all is a configuration, not a problem here
        warnings.simplefilter("ignore")
        init = initial_student(prof, student.proj.weight.shape[0])
    towers = {"student": student.to(dev), "student_init": init.to(dev), "clip_patched": patched,
              "clip_zeroshot": zeroshot}
    encoders = {name: (tower, ENCODERS[name][0]) for name, tower in towers.items()}
    extra = {baselines.BAND_STATISTICS: (baselines.BandStatistics(), "ms")}
    bands = read_band_metadata(align_dir)
    ms_tf = ms_resize(prof.align.ms_size)
    frames, arrays, base_rows = [], {}, []
    for spec in cfg.datasets:
        spec = evaluation_spec(spec, bands)
        val, test = held_out(spec, bundle.preprocess_val, prof.align.carve, ms_tf)
        if test is None:
            raise ValueError(f"probe dataset {spec.name}: needs a test split (test_split is null)")
        splits = {"train": training_split(spec, bundle.preprocess_val, prof.align.carve, ms_tf), "val": val,
                  "test": test}
        feats: dict[str, dict[str, Split]] = {}
        multilabel = bool(getattr(val, "multilabel", False))
        for split, data in splits.items():
            if cfg.max_items is not None and len(data) > cfg.max_items:
                keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_items]
                data = Subset(data, sorted(keep.tolist()))
            loader = DataLoader(data, batch_size=prof.align.eval_batch_size, shuffle=False,
                                num_workers=prof.align.train.num_workers)
            out, targets = embed({**encoders, **extra}, loader, dev, desc=f"probe {spec.name}/{split}")
            feats[split] = {name: Split.of(out[name], targets) for name in (*encoders, *extra)}
        arrays[scores_name(spec.name, "targets")] = feats["test"]["student"].targets
        for name in encoders:
            rows = few_shot_curve(feats["train"][name], feats["val"][name], feats["test"][name], multilabel,
                                  shots=cfg.shots, seeds=cfg.seeds, Cs=cfg.Cs)
            arrays.update({scores_name(spec.name, name, r["shots"], r["seed"]): r["test_scores"] for r in rows})
            frames.append(pd.DataFrame([{"dataset": spec.name, "model": name, "modality": ENCODERS[name][0],
                                         **{k: v for k, v in r.items() if k != "test_scores"}} for r in rows]))
        rows, scores = baselines.baseline_rows(spec.name, feats, list(encoders), multilabel, shots=cfg.shots,
                                               seeds=cfg.seeds, Cs=cfg.Cs)
        base_rows += rows
        arrays.update(scores)
    results = pd.concat(frames, ignore_index=True)
    checkpoint.atomic_write_text(Path(out_dir) / RESULTS_FILE, results.to_csv(index=False))
    base = pd.DataFrame(base_rows)
    checkpoint.atomic_write_text(Path(out_dir) / BASELINES_FILE, base.to_csv(index=False))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    checkpoint.atomic_write_bytes(Path(out_dir) / SCORES_FILE, buffer.getvalue())
    differences = difference_table(arrays, n_boot=cfg.bootstrap)
    checkpoint.atomic_write_text(Path(out_dir) / DIFFERENCES_FILE, differences.to_csv(index=False))
    checkpoint.atomic_write_text(Path(out_dir) / "probe.json", json.dumps(
        {"config": dataclasses.asdict(cfg), "patch_dir": str(patch_dir), "align_dir": str(align_dir)},
        indent=1, default=str) + "\n")
    return ProbeRun(Path(out_dir), results, differences, base)

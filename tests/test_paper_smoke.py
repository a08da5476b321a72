"""The paper profiles' whole path on the CPU: every stage the book runs, with the profiles' own configs
except for random weights of the same architectures at a reduced image size, the shipped BigEarthNet
and EuroSAT samples, small ImageNet-, RESISC45- and SEN12MS-layout folders written here, and one
optimiser step per training stage (the samples are smaller than one batch)."""

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from mtmg import pipeline, probe, report
from mtmg.datasets.folder import RESISC45_CLASSES
from mtmg.models import register_model_config
from mtmg.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SMOKE_SIZES = {"ViT-B-32": 64, "ViT-B-16": 32, "ViT-L-14": 28}
"""Image side of each architecture here: a 2 x 2 grid of patches."""
PROFILES = ("paper", "paper_vit_b16", "paper_vit_l14")


def _jpeg(path: Path, rng, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)


def _imagenet(root: Path, rng) -> None:
    wnids = ["n01440764", "n01443537", "n01484850"]
    for wnid in wnids:
        for i in range(8):
            _jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", rng, 40)
        for i in range(2):
            _jpeg(root / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG", rng, 40)
    (root / "classnames.txt").write_text("tench\ngoldfish\ngreat white shark\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na bad photo of the {c}.\n")


def _resisc45(root: Path, rng) -> None:
    names = []
    for cls in RESISC45_CLASSES:
        _jpeg(root / "NWPU-RESISC45" / cls / f"{cls}_001.jpg", rng, 256)
        names.append(f"{cls}_001.jpg")
    for split in ("train", "val", "test"):
        (root / f"resisc45-{split}.txt").write_text("\n".join(names) + "\n")


def _sen12ms(root: Path, rng) -> None:
    def write(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=array.shape[0],
                           dtype=array.dtype, transform=Affine(10, 0, 0, 0, -10, 0)) as f:
            f.write(array)

    splits = {"train": [1, 2, 3, 4], "val": [5, 6], "test": [7, 8]}
    for split, patches in splits.items():
        names = []
        for n in patches:
            name = f"ROIs1158_spring_s2_{n}_p{n}"
            write(root / "ROIs1158_spring" / f"s2_{n}" / f"{name}.tif",
                  rng.integers(0, 4000, (13, 256, 256), dtype=np.uint16))
            lc = np.zeros((4, 256, 256), dtype=np.uint16)
            lc[0, :128], lc[0, 128:] = (1, 10) if n % 2 else (12, 17)  # two classes per patch
            write(root / "ROIs1158_spring" / f"lc_{n}" / f"{name.replace('_s2_', '_lc_')}.tif", lc)
            names.append(f"{name}.tif")
        (root / f"{split}_list.txt").write_text("\n".join(names) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data folders, smoke model configs and a private run store and cache."""
    base = tmp_path_factory.mktemp("paper_smoke")
    rng = np.random.default_rng(0)
    _imagenet(base / "imagenet", rng)
    _resisc45(base / "resisc45", rng)
    _sen12ms(base / "sen12ms", rng)
    configs = base / "model_configs"
    configs.mkdir()
    for name, side in SMOKE_SIZES.items():
        cfg = open_clip.get_model_config(name)
        cfg["vision_cfg"]["image_size"] = side
        (configs / f"{name}-smoke.json").write_text(json.dumps(cfg))
    register_model_config(configs)
    ben = str(DATA / "bigearthnet_sample" / "v1")
    roots = {"bigearthnet5": ben, "bigearthnet19": ben, "bigearthnet43": ben,
             "eurosat_ms": str(DATA / "eurosat_ms_sample"), "sen12ms": str(base / "sen12ms"),
             "resisc45": str(base / "resisc45"), "folder": str(base / "imagenet")}
    return base, roots


SMOKE_PROBE = probe.ProbeConfig(shots=(1, probe.ALL), seeds=(0,), Cs=(1.0,))


@pytest.mark.paper_path
@pytest.mark.parametrize("name", PROFILES)
def test_paper_profile_runs_end_to_end(world, name, monkeypatch):
    base, roots = world
    monkeypatch.setenv("MTMG_RUNS", str(base / "runs"))
    monkeypatch.setenv("MTMG_CACHE", str(base / "cache"))
    configured = load_profile(name)
    arch = configured.patch.clip.name
    prof = load_profile(name, device="cpu", data_roots=roots, clip_model=f"{arch}-smoke", eval_batch_size=64,
                        overrides={
                            "patch.clip.pretrained": None, "zeroshot.clip.pretrained": None,
                            "patch.alphas": [0.0, 0.5, 1.0], "align.train.max_steps": 1,
                            "patch.train.num_workers": 0, "align.train.num_workers": 0, "zeroshot.num_workers": 0,
                            "align.student.weights": None, "align.student.overrides": {"img_size": 32},
                            "align.ms_size": 32, "embed_max": 50})
    assert prof.align.augment == configured.align.augment and prof.patch.augment == configured.patch.augment
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation warnings
        zeroshot = pipeline.ensure_zeroshot(prof)
        patch = pipeline.ensure_patch(prof)
        align = pipeline.ensure_align(prof)
        patched = pipeline.ensure_patched_zeroshot(prof)
        emb = pipeline.ensure_embeddings(prof)
        smoke_probe = dataclasses.replace(SMOKE_PROBE, datasets=probe.load_probe_config(prof).datasets)
        probes = pipeline.ensure_probe(prof, smoke_probe)

    # every dataset the paper reports: patched and zero-shot CLIP on all of them ...
    scored = {e["dataset"] for e in zeroshot["datasets"]}
    assert scored == {"bigearthnet5", "bigearthnet19", "bigearthnet43", "eurosat_ms", "sen12ms", "resisc45", "folder"}
    assert {e["dataset"] for e in patched["datasets"]} == scored
    multilabel = [e for e in zeroshot["datasets"] if e["multilabel"]]
    assert multilabel and all(e["value_authors"] is not None for e in multilabel)
    # ... one optimiser step per training stage, the alpha sweep on validation ...
    assert len(patch.log) == 1 and len(align.log) == 1
    assert set(patch.scores["alpha"]) == {0.0, 0.5, 1.0}
    # ... the student on BigEarthNet-5/19/43, SEN12MS (B10 zeroed: trained on L2A) and EuroSAT, both AP columns
    results = align.results
    assert set(results["dataset"]) == {"eurosat_ms", "bigearthnet5", "bigearthnet19", "bigearthnet43", "sen12ms"}
    assert (results["metric"] == "macro_ap_authors").any()
    assert json.loads((align.out_dir / "student_bands.json").read_text())["zero_filled"] == ["B10"]
    assert len(emb.ids) == 50
    assert set(probes["model"]) == set(probe.ENCODERS)
    assert set(probes["dataset"]) == {"bigearthnet5", "bigearthnet19", "bigearthnet43", "eurosat_ms"}
    # the book's tables build from these outputs
    assert not report.alignment_scores(results).empty
    assert not report.gains_table(zeroshot, patched).empty
    assert not probe.probe_table(probes).empty
    shutil.rmtree(base / "runs" / name)  # the largest files (CLIP towers) are not needed any more

"""The paper profiles' whole path on the CPU, as a GPU user runs it: every notebook of the book executed
by papermill with the profile's parameters, then the book built from the executed notebooks. What
differs is scale and downloads only: random weights of the same architectures at a reduced image size
(model configs handed to the notebooks as JSON files), the shipped BigEarthNet and EuroSAT samples,
small ImageNet-, RESISC45- and SEN12MS-layout folders written here, one optimiser step per training stage
(the samples are smaller than one batch), three α values and a one-fit linear probe per encoder on at most
40 tiles per split. The three profiles share the two cores: under 5 minutes in all on an idle machine."""

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import open_clip
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from mtmg.book import report
from mtmg.book.notebook import execute_notebooks
from mtmg.data.datasets.folder import RESISC45_CLASSES
from mtmg.evaluation import probe
from mtmg.method.alignment import AlignResult
from mtmg.method.patching import PatchResult
from mtmg.runs import pipeline, stages
from mtmg.runs.probe import ProbeRun
from mtmg.runs.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "mtmg")  # mtmg: the chapters include the library's source
SMOKE_SIZES = {"ViT-B-32": 32, "ViT-B-16": 16, "ViT-L-14": 14}
"""Image side of each architecture here: one patch (plus the class token), the smallest image the towers take."""
SMOKE_CONTEXT = 18
"""Text positions of the smoke towers (77 in the real ones): the longest prompt of the book, 18 tokens with its
start and end tokens, is not cut."""
PROFILES = ("paper_vit_l14", "paper", "paper_vit_b16")
"""Longest first: the order in which the two workers take them."""
SMOKE_OVERRIDES = {
    "patch.clip.pretrained": None, "zeroshot.clip.pretrained": None, "patch.alphas": [0.0, 0.5, 1.0],
    "align.train.max_steps": 1, "patch.train.num_workers": 0, "align.train.num_workers": 0,
    "zeroshot.num_workers": 0, "align.student.weights": None, "align.student.overrides": {"img_size": 32},
    "align.ms_size": 32, "embeddings.max_items": 50, "probe.shots": [1, probe.ALL], "probe.seeds": [0],
    "probe.Cs": [1.0], "probe.max_items": 40, "patch.train.drop_last": False, "align.train.drop_last": False}
"""Scale, not code path: random weights, one step (kept although the samples are smaller than one batch, which
the paper profiles' drop_last would leave out), three α values, one probe fit per shot setting on at most 40
tiles per split (the paper profiles cap theirs at 20,000)."""


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
    """Data folders, the smoke model configs (one JSON file per architecture) and a private run store and cache."""
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
        cfg["text_cfg"]["context_length"] = SMOKE_CONTEXT
        (configs / f"{name}-smoke.json").write_text(json.dumps(cfg))
    ben = str(DATA / "bigearthnet_sample" / "v1")
    roots = {"bigearthnet5": ben, "bigearthnet19": ben, "bigearthnet43": ben,
             "eurosat_ms": str(DATA / "eurosat_ms_sample"), "sen12ms": str(base / "sen12ms"),
             "resisc45": str(base / "resisc45"), "folder": str(base / "imagenet")}
    return base, roots, configs


def _parameters(name: str, roots: dict, configs: Path) -> dict:
    arch = load_profile(name).patch.clip.name
    return {"profile": name, "device": "cpu", "data_roots": roots, "clip_model": str(configs / f"{arch}-smoke.json"),
            "eval_batch_size": 64, "threads": 1, "overrides": SMOKE_OVERRIDES}


def _build_book(executed: dict[str, Path], where: Path) -> Path:
    """``jupyter-book build`` (as ``make book``) of a copy of the book sources holding ``executed``."""
    where.mkdir(parents=True)
    for item in BOOK_SOURCES:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, where / item, ignore=shutil.ignore_patterns("executed", "_build", "__pycache__"))
        else:
            shutil.copy(source, where / item)
    (where / "book" / "executed").mkdir()
    for stem, path in executed.items():
        shutil.copy(path, where / "book" / "executed" / f"{stem}.ipynb")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(jupyter_book), "build", str(where), "--warningiserror", "--nitpick"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return where / "_build" / "html"


def _run_notebooks(name: str, roots: dict, configs: Path, folder: Path) -> dict:
    """Every notebook in sorted order through papermill into ``folder`` (one kernel, as ``make notebooks``)."""
    params = _parameters(name, roots, configs)
    started = time.perf_counter()
    done = execute_notebooks([(nb, folder / "executed" / nb.name) for nb in NOTEBOOKS], params)
    return {"params": params, "executed": {nb.stem: path for nb, path in zip(NOTEBOOKS, done)},
            "notebooks_s": time.perf_counter() - started}


def _timed_book(executed: dict[str, Path], where: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    return _build_book(executed, where), time.perf_counter() - started


@pytest.fixture(scope="module")
def books(world):
    """Each paper profile's notebooks, then its book, on two workers of one torch thread each (one per core).
    The notebooks of the profiles are queued longest first and each book build joins the queue when its
    notebooks are done: ViT-L-14's notebooks take one worker, the other two profiles' the second, and the
    three book builds whichever worker is free. A profile that failed holds its exception."""
    base, roots, configs = world
    started = time.perf_counter()
    outcomes: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(2) as pool:
        env.setenv("MTMG_RUNS", str(base / "runs"))
        env.setenv("MTMG_CACHE", str(base / "cache"))
        runs = {pool.submit(_run_notebooks, name, roots, configs, base / name): name for name in PROFILES}
        builds = {}
        for future in as_completed(runs):
            name = runs[future]
            if future.exception() is not None:
                outcomes[name] = future.exception()
                continue
            outcomes[name] = future.result()
            builds[name] = pool.submit(_timed_book, outcomes[name]["executed"], base / name / "book")
        for name, future in builds.items():
            if future.exception() is not None:
                outcomes[name] = future.exception()
            else:
                outcomes[name]["html"], outcomes[name]["book_s"] = future.result()
    for name in PROFILES:
        out = outcomes[name]
        if isinstance(out, dict):
            print(f"\n{name}: notebooks {out['notebooks_s']:.0f} s, book {out['book_s']:.0f} s")
    print(f"all paper profiles: {time.perf_counter() - started:.0f} s; load average {os.getloadavg()}")
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILES)
def test_paper_profile_book_builds(world, books, name, monkeypatch):
    base, roots, configs = world
    out = books[name]
    if isinstance(out, BaseException):
        raise out
    monkeypatch.setenv("MTMG_RUNS", str(base / "runs"))
    monkeypatch.setenv("MTMG_CACHE", str(base / "cache"))
    params, html = out["params"], out["html"]
    toc = (REPO / "_toc.yml").read_text()
    listed = [stem for stem in out["executed"] if f"book/executed/{stem}" in toc]
    assert listed and all((html / "book" / "executed" / f"{stem}.html").is_file() for stem in listed)

    # the notebooks ran the profile's own configs with the smoke model config; read what they stored
    configured = load_profile(name)
    prof = load_profile(name, device="cpu", data_roots=roots, clip_model=params["clip_model"], eval_batch_size=64,
                        overrides=SMOKE_OVERRIDES)
    assert prof.align.augment == configured.align.augment and prof.patch.augment == configured.patch.augment
    zeroshot = stages.ZeroShotResult.load(pipeline.stage_folder(prof, "zeroshot"))
    patch = PatchResult.load(pipeline.stage_folder(prof, "patch"))
    align = AlignResult.load(pipeline.stage_folder(prof, "align"))
    patched = stages.ZeroShotResult.load(pipeline.stage_folder(prof, "zeroshot_patched"))
    emb = stages.Embeddings.load(pipeline.stage_folder(prof, "embeddings"))
    probe_run = ProbeRun.load(pipeline.stage_folder(prof, "probe"))  # as chapter 5 stored it
    probes = probe_run.results
    assert zeroshot["model"].startswith(f"{Path(params['clip_model']).name}@sha256:")  # the smoke config's content

    # every dataset the paper reports: patched and zero-shot CLIP on all of them ...
    scored = {e["dataset"] for e in zeroshot["datasets"]}
    assert scored == {"bigearthnet5", "bigearthnet19", "bigearthnet43", "eurosat_ms", "sen12ms", "resisc45", "folder"}
    assert {e["dataset"] for e in patched["datasets"]} == scored
    # stage 1's CLIP, and without weights the zero-shot stage's too (one random initialisation per architecture)
    assert zeroshot["weights"] == patched["weights"] == json.loads((patch.out_dir / "clip.json").read_text())["weights"]
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
    differences = probe_run.differences
    assert set(differences["dataset"]) == set(probes["dataset"]) and differences["low"].notna().all()
    shutil.rmtree(base / "runs" / name)  # the largest files (CLIP towers) are not needed any more

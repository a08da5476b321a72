"""Bad inputs of the run store, the config loader and the command line: nothing is deleted outside the run
store, nothing stale is served, no typo is silently ignored, and each fault is one line naming its cause."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mtmg.cli import main
from mtmg.core import checkpoint, paths, runstore
from mtmg.core.config import AlignConfig, DataSpec, PatchConfig, load_config, save_config
from mtmg.core.errors import ConfigError, StorageError
from mtmg.runs import pipeline
from mtmg.runs.profiles import load_profile, override

from conftest import ROOT, TINY

pytestmark = pytest.mark.usefixtures("isolated", "one_thread")

KEY = "0123456789abcdef"
TINY_PATCH = {"clip.pretrained": None, "train.max_steps": 2, "alphas": [0.0, 1.0],
              "supported.0.options": {"num_samples": 20}}


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"mtmg {command}: error: ") and err.count("\n") == 1, err
    return err


def outside_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.txt").write_text("keep")
    (folder / "sub" / "keep.txt").write_text("keep")
    return folder


def untouched(folder: Path) -> bool:
    return (folder / "keep.txt").read_text() == "keep" and (folder / "sub" / "keep.txt").read_text() == "keep"


# --- runs clean stays inside runs/; profile names are names --------------------------------------

def test_runs_clean_never_follows_a_link_out_of_the_store(tmp_path, capsys):
    outside = outside_folder(tmp_path)
    (tmp_path / "outside.txt").write_text("keep")
    store = paths.runs_dir()
    linked = store / "default" / "patch" / KEY
    linked.parent.mkdir(parents=True)
    linked.symlink_to(outside, target_is_directory=True)
    other = tmp_path / "other_store" / "patch" / "00000000000000ff"
    other.mkdir(parents=True)
    (other / "keep.txt").write_text("keep")
    (store / "linkedprofile").symlink_to(tmp_path / "other_store", target_is_directory=True)
    real = store / "default" / "align" / "fedcba9876543210"
    (real / "train").mkdir(parents=True)
    (real / "train" / "checkpoint.pt").write_bytes(b"x")
    (real / "to_folder").symlink_to(outside, target_is_directory=True)
    (real / "train" / "to_file").symlink_to(tmp_path / "outside.txt")
    (real / runstore.LOCK_FILE).symlink_to(tmp_path / "outside.txt")  # the lock must not truncate it
    assert main(["runs", "list"]) == 0
    listed = capsys.readouterr().out
    assert KEY not in listed and "fedcba9876543210" in listed and "1 runs in" in listed
    assert main(["runs", "clean", "--all"]) == 0
    assert "1 of 1 runs removed" in capsys.readouterr().out
    assert not real.exists() and linked.is_symlink()
    assert untouched(outside) and (tmp_path / "outside.txt").read_text() == "keep"
    assert (other / "keep.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="symbolic link"):
        runstore.remove_run(runstore.StoredRun("default", "patch", KEY, linked, None, 0))
    assert untouched(outside)


@pytest.mark.parametrize("name", ["../../x", "/abs/olute", "..", ".hidden", "a/b", ""])
def test_a_profile_name_is_never_a_path(tmp_path, capsys, name):
    with pytest.raises(ConfigError, match="plain profile name"):
        load_profile("default", overrides={"patch.profile": name, "align.profile": name})
    with pytest.raises(ValueError, match="plain name"):
        runstore.stage_folder(name, "patch", KEY)
    config = tmp_path / "patch.yaml"
    config.write_text(yaml.safe_dump({"profile": name}))
    assert main(["patch", "--config", str(config), "--device", "cpu"]) == 2
    assert "profile: expected a plain profile name" in one_line_error(capsys, "patch")
    assert not (tmp_path / "x").exists() and not Path("/abs/olute").exists()


def test_patch_and_align_must_name_the_same_profile_after_overrides():
    with pytest.raises(ConfigError, match="must name the same profile"):
        load_profile("default", overrides={"patch.profile": "other"})


# --- the data manifest sees what the readers read; bad links stop nothing they do not read ---------

def test_a_linked_class_folder_and_a_hidden_image_are_part_of_the_key(tmp_path, eurosat_copy):
    from mtmg.data.datasets import get_dataset

    spec = DataSpec(name="eurosat_ms", root=str(eurosat_copy))
    n = len(get_dataset("eurosat_ms", eurosat_copy, "test"))
    moved = tmp_path / "elsewhere" / "Forest"
    shutil.move(eurosat_copy / "Forest", moved)
    (eurosat_copy / "Forest").symlink_to(moved, target_is_directory=True)
    assert len(get_dataset("eurosat_ms", eurosat_copy, "test")) == n, "the reader reads the linked folder"
    before = runstore.stage_key("patch", PatchConfig(), data=[spec])
    tile = next(moved.glob("*.tif"))
    tile.write_bytes(tile.read_bytes()[:-1] + b"\x01")
    assert runstore.stage_key("patch", PatchConfig(), data=[spec]) != before

    folder = tmp_path / "images"
    for cls in ("cat", "dog"):
        (folder / "train" / cls).mkdir(parents=True)
        for name in (f"{cls}.png", f".{cls}_hidden.png"):
            Image.new("RGB", (8, 8), (len(name), 0, 0)).save(folder / "train" / cls / name)
    assert len(get_dataset("folder", folder, "train")) == 4, "the reader reads hidden images"
    spec = DataSpec(name="folder", root=str(folder))
    before = runstore.stage_key("patch", PatchConfig(), data=[spec])
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "train" / "cat" / ".cat_hidden.png")
    assert runstore.stage_key("patch", PatchConfig(), data=[spec]) != before


def test_broken_and_looping_links_outside_the_split_stop_nothing(eurosat_copy):
    from mtmg.data.datasets import get_dataset

    spec = DataSpec(name="eurosat_ms", root=str(eurosat_copy))
    before = runstore.data_manifest(spec)["files"][str(eurosat_copy)]
    n = len(get_dataset("eurosat_ms", eurosat_copy, "test"))
    (eurosat_copy / "Forest" / "Forest_9999.tif").symlink_to(eurosat_copy / "nowhere.tif")  # broken
    (eurosat_copy / "Forest" / "Forest_9998.tif").symlink_to(eurosat_copy / "Forest" / "Forest_9998.tif")  # loop
    (eurosat_copy / "Forest" / "up").symlink_to(eurosat_copy, target_is_directory=True)  # a folder loop
    (eurosat_copy / "notes").symlink_to("missing-folder")
    files = runstore.data_manifest(spec)["files"][str(eurosat_copy)]
    assert "link to" in files["Forest/Forest_9999.tif"] and "link to" in files["Forest/Forest_9998.tif"]
    assert "already" in files["Forest/up"] and "link to missing-folder" in files["notes"]
    assert {k: v for k, v in files.items() if k in before} == before
    assert len(get_dataset("eurosat_ms", eurosat_copy, "test")) == n


def test_a_looping_link_inside_the_split_is_named_or_skipped(eurosat_copy):
    from mtmg.data.datasets import MissingFileError, get_dataset

    first = get_dataset("eurosat_ms", eurosat_copy, "test")
    path = first.records[0].files["image"]
    path.unlink()
    path.symlink_to(path.name)  # a link to itself
    with pytest.raises(MissingFileError, match=f"{path}: .*loops back to itself"):
        get_dataset("eurosat_ms", eurosat_copy, "test")[0]
    with pytest.warns(UserWarning, match="skipped 1"):
        skipped = get_dataset("eurosat_ms", eurosat_copy, "test", on_error="skip")
    assert len(skipped) == len(first) - 1 and skipped.skipped[0].path == path


# --- a misspelt dataset name is an error ---------------------------------------------------------------

@pytest.mark.parametrize("roots, message", [
    ({"eurosatt_ms": "/my/data"}, "did you mean 'eurosat_ms'"),
    ({"bigearthnet": "/my/data"}, "unknown dataset 'bigearthnet'"),
])
def test_a_misspelt_dataset_name_in_data_roots_is_an_error(roots, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("default", data_roots=roots)


def test_a_misspelt_data_root_of_the_probe_command_is_one_line(capsys):
    assert main(["probe", "--data-root", "eurosatt_ms=/my/data"]) == 2
    assert "data_roots['eurosatt_ms']: unknown dataset" in one_line_error(capsys, "probe")


def test_a_storage_error_without_a_file_name_is_one_line_with_the_fix(monkeypatch, capsys):
    from mtmg.cli import runs

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs, "run", full)
    assert main(["runs", "list"]) == 2
    assert "No space left on device; free space" in one_line_error(capsys, "runs")


def test_a_misspelt_dataset_name_in_a_config_fails_at_load():
    with pytest.raises(ConfigError, match=r"align.eval_sets.0.name: unknown dataset 'eurosat'"):
        load_profile("default", overrides={"align.eval_sets.0.name": "eurosat"})


# --- hand-edited outputs and corrupt status files ---------------------------------------------------

def _finished(folder: Path, files=("selected_alpha.json", "scores.csv")) -> None:
    with runstore.writing("patch", folder, KEY, files):
        (folder / "selected_alpha.json").write_text('{"alpha": 1.0}')
        (folder / "scores.csv").write_text("alpha,value\n1.0,0.5\n")


@pytest.mark.parametrize("name, content", [("selected_alpha.json", '{"alpha": 0.3}'), ("scores.csv", "")])
def test_a_hand_edited_output_is_not_served(tmp_path, name, content):
    folder = tmp_path / "stage"
    _finished(folder)
    assert runstore.is_current(folder, KEY, ["selected_alpha.json", "scores.csv"])
    (folder / name).write_text(content)
    message = f"{folder / name}: changed or removed since stage patch wrote it"
    with pytest.raises(runstore.ChangedOutputError, match=message):
        runstore.is_current(folder, KEY, ["selected_alpha.json", "scores.csv"])
    with pytest.raises(runstore.ChangedOutputError, match=message):  # a stage reading the folder refuses it too
        runstore.recorded_key(folder)
    _finished(folder)  # written again (force=True), it is served again
    assert runstore.is_current(folder, KEY, ["selected_alpha.json", "scores.csv"])


def test_align_refuses_a_teacher_folder_with_an_edited_alpha(tmp_path, capsys):
    teacher, out = tmp_path / "patch", tmp_path / "out"
    _finished(teacher)
    (teacher / "selected_alpha.json").write_text('{"alpha": 0.3}')
    config = ROOT / "configs" / "default" / "align.yaml"
    argv = ["align", "--config", str(config), "--teacher", str(teacher), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    assert f"{teacher / 'selected_alpha.json'}: changed" in one_line_error(capsys, "align") and not out.exists()


@pytest.mark.parametrize("content", ['{"stage": "patch", "ke', "[1, 2]", "", '{"stage": "patch"}', "\xff"])
def test_a_corrupt_status_file_names_the_file_and_is_rewritten_or_cleaned(tmp_path, capsys, content):
    folder = runstore.stage_folder("default", "patch", KEY)
    _finished(folder)
    (folder / runstore.STATUS_FILE).write_text(content, encoding="latin-1")
    with pytest.raises(runstore.CorruptStatusError, match=f"{folder / runstore.STATUS_FILE}: not"):
        runstore.recorded_key(folder)
    with pytest.warns(UserWarning, match=str(folder / runstore.STATUS_FILE)):
        assert not runstore.is_current(folder, KEY, ["scores.csv"])
    assert main(["runs", "list"]) == 0 and "unfinished" in capsys.readouterr().out
    assert main(["runs", "clean"]) == 0 and not folder.exists()


# --- runs clean --older-than ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_runs_clean_refuses_a_duration_that_is_not_a_number_of_days(capsys, value):
    folder = runstore.stage_folder("default", "patch", KEY)
    _finished(folder)
    assert main(["runs", "clean", f"--older-than={value}", "--dry-run"]) == 2
    assert "--older-than" in one_line_error(capsys, "runs") and folder.exists()


# --- a refused --resume touches nothing ----------------------------------------------------------------

def test_a_refused_resume_touches_nothing(tmp_path, capsys):
    config, out = tmp_path / "patch.yaml", tmp_path / "out"
    save_config(override(PatchConfig(), TINY_PATCH), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["patch", "--config", str(config), "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    save_config(override(PatchConfig(), {**TINY_PATCH, "train.lr": 1e-3}), config)
    time.sleep(0.01)
    assert main(["patch", "--config", str(config), "--device", "cpu", "--out", str(out), "--resume"]) == 2
    err = one_line_error(capsys, "patch")
    assert "checkpoint.pt: the checkpoint was written with other settings" in err and "train.lr" in err
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before


# --- the config loader ----------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("train: {lr: [1.0e-3]}\n", "train.lr: expected a number, got [0.001]"),
    ("train: {lr: null}\n", "train.lr: expected a number, got None"),
    ("train: {lr: {a: 1}}\n", "train.lr: expected a number, got {'a': 1}"),
    ("train: {lr: true}\n", "train.lr: expected a number, got True"),
    ("train: {lr: .inf}\n", "train.lr: expected a finite number"),
    ("train: {weight_decay: .nan}\n", "train.weight_decay: expected a finite number"),
    ("alphas: [true, false]\n", "alphas[0]: expected a number, got True"),
    ("carve_fraction: [0.1]\n", "carve_fraction: expected a number"),
    ("task: {root: data/eurosat_ms_sample}\n", "task: missing key(s) ['name']"),
    ("task: {name: eurosat_ms, options: {1: 2}}\n", "task.options: expected a mapping with text keys"),
])
def test_float_and_structure_errors_name_the_file_and_key(tmp_path, capsys, text, message):
    config = tmp_path / "patch.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(config, PatchConfig)
    assert str(err.value).startswith(str(config)) and message in str(err.value)
    assert main(["patch", "--config", str(config), "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys, "patch") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage, changes, message", [
    ("patch", {"task": {"name": "eurosatt_ms"}}, "task.name: unknown dataset 'eurosatt_ms' (did you mean"),
    ("patch", {"task": {"name": "eurosat_ms", "root": "no/such/folder"}}, "task.root: "),
    ("patch", {"task": {"name": "eurosat_ms", "root": "data/eurosat_ms_sample", "options": {"colour": 1}}},
     "task.options: unknown option(s) ['colour']"),
    ("patch", {"task": {"name": "eurosat_ms", "root": "data/eurosat_ms_sample", "options": {"on_error": 3}}},
     "task.options.on_error: expected one of ['raise', 'skip']"),
    ("patch", {"supported": [{"name": "synthetic", "options": {"num_samples": "many"}}]},
     "supported.0.options.num_samples: expected int"),
    ("align", {"student": {"arch": "vit_smal_patch16_224"}}, "student.arch: unknown timm model"),
    ("align", {"student": {"overrides": {"depth": "deep"}}}, "student.overrides: vit_small_patch16_224 cannot"),
    ("align", {"student": {"overrides": {"colour": 1}}}, "student.overrides: vit_small_patch16_224 cannot"),
    ("align", {"student": {"weights": "no/such/weights.pt"}}, "student.weights: "),
])
def test_semantic_errors_fail_before_any_file_is_written(tmp_path, capsys, stage, changes, message):
    config, out = tmp_path / f"{stage}.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(changes))
    argv = [stage, "--config", str(config), "--device", "cpu", "--out", str(out)]
    assert main(argv + (["--teacher", str(tmp_path)] if stage == "align" else [])) == 2
    assert f"{config}.{message}" in one_line_error(capsys, stage)
    assert not out.exists()
    cfg = load_config(config, PatchConfig if stage == "patch" else AlignConfig)
    from mtmg.method import alignment, patching
    with pytest.raises(ConfigError, match=f"{stage}." + message.split(":")[0]):
        if stage == "patch":
            patching.run_patching(cfg, out_dir=out, device="cpu")
        else:
            alignment.run_alignment(cfg, teacher_dir=tmp_path, out_dir=out, device="cpu")
    assert not out.exists()


def test_a_missing_data_root_stops_the_pipeline_before_any_file_is_written():
    prof = load_profile("default", data_roots={"eurosat_ms": "no/such/folder"}, overrides=TINY)
    with pytest.raises(ConfigError, match=r"patch.task.root: .*no/such/folder: no such folder"):
        pipeline.ensure_patch(prof)
    assert not [p for p in paths.runs_dir().rglob("*") if p.is_file()]


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "patch.yaml"
    config.write_bytes("task: {name: eurosat_ms}\n# caf\xe9\n".encode("latin-1"))
    assert main(["patch", "--config", str(config), "--device", "cpu"]) == 2
    assert f"{config}: not UTF-8 text" in one_line_error(capsys, "patch")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['  a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    config = tmp_path / "patch.yaml"
    config.write_text("task:\n name: eurosat_ms\n options:\n" + "\n".join(" " + line for line in lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"{config}: the config expands to more than"):
        load_config(config, PatchConfig)
    assert time.perf_counter() - t0 < 5


# --- file-system faults, weight and score files, long names ----------------------------------------------

ZEROSHOT = ["zeroshot", "--model", "MiniCLIP-64", "--dataset", "eurosat_ms", "--root",
            str(ROOT / "data" / "eurosat_ms_sample"), "--workers", "0", "--device", "cpu"]


def test_a_numpy_archive_as_clip_weights_is_one_line(tmp_path, capsys):
    weights = tmp_path / "w.npz"
    np.savez(weights, a=np.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*ZEROSHOT, "--pretrained", str(weights)]) == 2
    assert f"Could not load weights {weights}" in one_line_error(capsys, "zeroshot")


def test_an_out_name_over_the_file_system_limit_fails_before_the_evaluation(tmp_path, capsys, monkeypatch):
    from mtmg.models import clip

    monkeypatch.setattr(clip, "load_clip", lambda *a, **k: pytest.fail("the model and evaluation must not run"))
    out = tmp_path / ("r" * 300 + ".json")
    assert main([*ZEROSHOT, "--pretrained", "random", "--out", str(out)]) == 2
    assert "choose a shorter" in one_line_error(capsys, "zeroshot")


def test_an_object_array_in_the_probe_scores_names_the_file(tmp_path):
    from mtmg.evaluation import probe

    np.savez(tmp_path / probe.SCORES_FILE, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=f"{tmp_path / probe.SCORES_FILE}: not an archive"):
        probe.load_test_scores(tmp_path)


def test_a_full_disk_names_the_file_and_says_no_space_left(tmp_path, monkeypatch, capsys):
    real_open = os.open
    monkeypatch.setattr(checkpoint.os, "open", lambda path, *a: real_open("/dev/full", os.O_WRONLY))
    target = tmp_path / "zeroshot.pt"
    with pytest.raises(StorageError) as err:
        checkpoint.atomic_save({"w": torch.zeros(100_000)}, target)
    assert str(err.value).startswith(f"{target}: No space left on device; free space")
    assert err.value.errno == errno.ENOSPC and not target.exists()
    with pytest.raises(StorageError, match="No space left"):
        checkpoint.atomic_write_text(target, "x" * 100_000)


def test_a_read_only_run_store_is_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "patch.yaml"
    save_config(override(PatchConfig(), TINY_PATCH), config)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["patch", "--config", str(config), "--device", "cpu"]) == 2
    err = one_line_error(capsys, "patch")
    assert str(paths.runs_dir()) in err and "Read-only file system" in err and "MTMG_RUNS" in err


# --- relative MTMG_RUNS / MTMG_CACHE -------------------------------------------------------------------

def test_relative_store_variables_are_taken_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MTMG_RUNS", "elsewhere/runs")
    monkeypatch.setenv("MTMG_CACHE", "elsewhere/cache")
    for cwd in (tmp_path, ROOT / "notebooks"):
        monkeypatch.chdir(cwd)
        assert paths.runs_dir() == ROOT / "elsewhere" / "runs"
        assert paths.cache_dir() == ROOT / "elsewhere" / "cache"
    monkeypatch.setenv("MTMG_RUNS", str(tmp_path / "abs"))
    assert paths.runs_dir() == tmp_path / "abs"


def test_status_records_a_checksum_of_every_required_file(tmp_path):
    folder = tmp_path / "stage"
    _finished(folder)
    status = json.loads((folder / runstore.STATUS_FILE).read_text())
    assert set(status["files"]) == {"selected_alpha.json", "scores.csv"}
    assert status["files"]["scores.csv"] == runstore.file_digest(folder / "scores.csv")

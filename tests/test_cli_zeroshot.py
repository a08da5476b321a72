"""`python -m mtmg zeroshot` end to end on the shipped EuroSAT-MS test tiles with a tiny random CLIP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from mtmg.cli import main
from mtmg.data import prompts
from mtmg.data.datasets import get_dataset
from mtmg.models.clip import load_clip, register_model_config

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "model_configs" / "TinyCLIP-test.json"
ROOT = REPO / "data" / "eurosat_ms_sample"
SPLIT_FILE = REPO / "data" / "splits" / "eurosat_ms_sample-test.txt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    name = register_model_config(TINY_CONFIG)[0]
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = load_clip(name, None).model
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _reference_confusion(checkpoint):
    """Independent pipeline: open_clip's own head builder and encode_image, one tile at a time."""
    bundle = load_clip("TinyCLIP-test", checkpoint)
    dataset = get_dataset("eurosat_ms", ROOT, "test", rgb_transform=bundle.preprocess_val)
    templates = [lambda c, t=t: t.format(c=c) for t in prompts.templates("eurosat")]
    weights = open_clip.build_zero_shot_classifier(bundle.model, bundle.tokenizer, prompts.classnames("eurosat"),
                                                   templates)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    with torch.no_grad():
        for sample in dataset:
            features = bundle.model.encode_image(sample["rgb"][None], normalize=True)
            confusion[sample["target"], int((features @ weights).argmax())] += 1
    return confusion


def test_zeroshot_command_end_to_end(checkpoint, tmp_path, capsys):
    out, cache = tmp_path / "results" / "zeroshot.json", tmp_path / "cache"
    argv = ["zeroshot", "--model-config", str(TINY_CONFIG), "--model", "TinyCLIP-test",
            "--pretrained", str(checkpoint), "--dataset", "eurosat_ms", "--root", str(ROOT), "--split", "test",
            "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", str(out), "--cache-dir", str(cache)]
    assert main(argv) == 0
    result = _strict_json(out)
    n_tiles = len(SPLIT_FILE.read_text().split())
    assert result["n_samples"] == n_tiles == 50
    assert (result["dataset"], result["split"], result["model"]) == ("eurosat_ms", "test", "TinyCLIP-test")
    assert result["weights"].startswith("tiny.pt@sha256:")
    assert result["classes"][0] == "AnnualCrop" and len(result["classes"]) == 10

    confusion = _reference_confusion(checkpoint)
    assert result["metrics"]["confusion_matrix"] == confusion.tolist()
    assert result["metrics"]["top1"] == pytest.approx(confusion.diag().sum().item() / n_tiles)
    per_class = (confusion.diag() / confusion.sum(1)).tolist()
    assert result["metrics"]["per_class_accuracy"] == pytest.approx(per_class)

    table = capsys.readouterr().out
    assert "top-1 accuracy" in table and "SeaLake" in table and f"{100 * result['metrics']['top1']:.2f}%" in table
    assert len(list(cache.glob("head-eurosat_ms-*.pt"))) == 1

    # a second run reuses the cached head and gives the same result
    assert main(argv) == 0
    assert _strict_json(out) == result
    assert len(list(cache.glob("*.pt"))) == 1


def _run_cli(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HOME=str(tmp_path), HF_HOME=str(tmp_path / "hf"),
               HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    return subprocess.run([sys.executable, "-m", "mtmg", "zeroshot", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_missing_weights_fail_at_once(tmp_path):
    run = _run_cli(["--model", "ViT-B-32", "--pretrained", "openai", "--dataset", "eurosat_ms",
                    "--root", str(ROOT), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert run.returncode == 2, run.stderr
    assert "ViT-B-32/openai" in run.stderr and "open_clip_pytorch_model.bin" in run.stderr
    assert "--pretrained /path/to/" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "cache").exists()


def test_pretrained_is_required(capsys):
    assert main(["zeroshot", "--model", "ViT-B-32", "--dataset", "eurosat_ms", "--root", str(ROOT)]) == 2
    assert "--pretrained is required" in capsys.readouterr().err


def _argv(checkpoint, tmp_path, *extra):
    return ["zeroshot", "--model-config", str(TINY_CONFIG), "--model", "TinyCLIP-test", "--pretrained",
            str(checkpoint), "--dataset", "eurosat_ms", "--root", str(ROOT), "--device", "cpu", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), *extra]


def _file_under_a_file(tmp_path):
    (tmp_path / "plain").write_text("")
    return str(tmp_path / "plain" / "result.json")


BAD_ARGUMENTS = [
    (["--device", "banana"], "--device banana: Unknown device 'banana'"),
    (["--device", "cuda:7"], "--device cuda:7:"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--workers", "-1"], "--workers must be 0 (load data in the main process) or more, got -1"),
    (["--model", "NoSuchModel-1"], "Unknown model 'NoSuchModel-1'"),
    (["--dataset", "eurosat"], "unknown dataset 'eurosat'; expected one of eurosat_ms"),
    (["--dataset", "folder", "--split-file", str(SPLIT_FILE)], "--split-file: dataset folder reads its splits"),
    (["--split-file", "no-such-split.txt"], "--split-file no-such-split.txt: file not found"),
    (["--out", "{tmp}"], "is a folder; give a file name"),
    (["--out", "{file}"], "cannot write there"),
]


@pytest.mark.parametrize("extra, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_and_status_2_before_any_work(checkpoint, tmp_path, capsys, extra, message):
    extra = [a.format(tmp=tmp_path, file=_file_under_a_file(tmp_path)) for a in extra]
    assert main(_argv(checkpoint, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtmg zeroshot: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "cache").exists()  # nothing was evaluated


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    ("truncated", "Could not load weights"),
    (b"not a checkpoint at all", "Could not load weights"),
])
def test_bad_weight_files_name_the_file(checkpoint, tmp_path, capsys, content, message):
    weights = tmp_path / "weights.pt"
    data = checkpoint.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    argv = _argv(checkpoint, tmp_path)
    argv[argv.index("--pretrained") + 1] = str(weights)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{weights}" in err and message in err and err.count("\n") == 1, err


@pytest.fixture
def class_folders(tmp_path):
    """Six EuroSAT-MS test tiles in plain class folders, without split files, and a split file naming them."""
    names = SPLIT_FILE.read_text().split()[::9][:6]
    root = tmp_path / "tiles"
    for name in names:
        (root / name.rsplit("_", 1)[0]).mkdir(parents=True, exist_ok=True)
        (root / name.rsplit("_", 1)[0] / name).write_bytes((ROOT / name.rsplit("_", 1)[0] / name).read_bytes())
    split = tmp_path / "my-split.txt"
    split.write_text("\n".join(names) + "\n")
    return root, split, names


def test_split_file_and_on_error_skip(checkpoint, tmp_path, capsys, class_folders):
    root, split, names = class_folders
    argv = _argv(checkpoint, tmp_path, "--out", str(tmp_path / "r.json"))
    argv[argv.index("--root") + 1] = str(root)
    assert main(argv) == 2
    assert "no test split file for EuroSAT-MS" in capsys.readouterr().err
    assert main([*argv, "--split-file", str(split)]) == 0
    assert _strict_json(tmp_path / "r.json")["n_samples"] == 6
    bad = root / names[2].rsplit("_", 1)[0] / names[2]
    bad.write_bytes(bad.read_bytes()[:5000])
    for workers in ("0", "2"):  # the error is raised in the main process or in a DataLoader worker
        assert main([*argv, "--split-file", str(split), "--workers", workers]) == 2
        err = capsys.readouterr().err  # progress bars first, then the error
        error = err[err.index("mtmg zeroshot: error: "):]
        assert error.startswith(f"mtmg zeroshot: error: {bad}: cannot be decoded as a GeoTIFF"), err
        assert error.count("\n") == 1 and "Traceback" not in err
    with pytest.warns(UserWarning, match=f"skipped 1 .*{names[2]}"):
        assert main([*argv, "--split-file", str(split), "--on-error", "skip"]) == 0
    result = _strict_json(tmp_path / "r.json")
    assert result["n_samples"] == 5 and [s["path"] for s in result["skipped"]] == [str(bad)]
    assert f"left out 1 bad file(s) (--on-error skip):\n  {bad}: cannot be decoded" in capsys.readouterr().out


def test_tracebacks_only_with_debug(tmp_path):
    args = ["--model", "TinyCLIP-test", "--pretrained", "random", "--dataset", "eurosat_ms", "--root", str(ROOT),
            "--device", "banana"]
    run = _run_cli(args, tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == ("mtmg zeroshot: error: --device banana: Unknown device 'banana': expected "
                                  "'auto', 'cpu', 'cuda' or 'cuda:N'.")
    debug = _run_cli([*args, "--debug"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ArgumentError" in debug.stderr
    env = subprocess.run([sys.executable, "-m", "mtmg", "zeroshot", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MTMG_DEBUG="1"),
                         cwd=tmp_path, timeout=120)
    assert env.returncode == 1 and "Traceback" in env.stderr

"""`python -m mtmg zeroshot` end to end on the shipped EuroSAT-MS test tiles with a tiny random CLIP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from mtmg import prompts
from mtmg.cli import main
from mtmg.datasets import get_dataset
from mtmg.models import load_clip, register_model_config

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

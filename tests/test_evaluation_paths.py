"""The α sweep, the zero-shot stage and stage 2 score the same weights on the same data identically,
also under bf16 autocast (forced here on the CPU): the zero-shot head always runs in fp32."""

import contextlib
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mtmg.core.config import DataSpec
from mtmg.data import tasks
from mtmg.evaluation import embeddings
from mtmg.evaluation.scoring import evaluate_zeroshot, score_zeroshot
from mtmg.method import alignment, patching
from mtmg.models.clip import ImageClassifier, load_clip, register_model_config

REPO = Path(__file__).resolve().parents[1]
SPEC = DataSpec(name="eurosat_ms", root=str(REPO / "data" / "eurosat_ms_sample"))


@pytest.fixture
def bf16_autocast(monkeypatch):
    """bf16 autocast on the CPU wherever the library would use it on CUDA."""
    monkeypatch.setattr(embeddings, "autocast",
                        lambda device: torch.autocast("cpu", dtype=torch.bfloat16) if torch.device(device).type == "cpu"
                        else contextlib.nullcontext())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    register_model_config(REPO / "tests" / "model_configs" / "TinyCLIP-test.json")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = load_clip("TinyCLIP-test", None)
    data = tasks.open_split(SPEC, "test", bundle.preprocess_val)
    head, multilabel = tasks.head_for(bundle, SPEC, data, tmp_path_factory.mktemp("heads"))
    return bundle, data, head, multilabel


def test_head_logits_are_fp32_under_autocast(setup, bf16_autocast):
    bundle, data, head, _ = setup
    loader = DataLoader(data, batch_size=16)
    out, _ = embeddings.embed({"inside": (ImageClassifier(bundle.model.visual, head), "rgb"),
                               "features": (bundle.model.visual, "rgb")}, loader, "cpu")
    inside, features = out["inside"], out["features"]
    with torch.no_grad():
        outside = head(features)
    assert outside.dtype == torch.float32
    assert torch.equal(inside, outside)


def test_three_paths_give_identical_scores(setup, bf16_autocast):
    bundle, data, head, multilabel = setup
    visual = bundle.model.visual
    sweep = patching._score(visual, patching.EvalTask("eurosat_ms", head, multilabel, data), "test", data, 1.0,
                            16, torch.device("cpu"), 0)["value"]
    stage0 = score_zeroshot(bundle, SPEC, "test", heads_dir=None, device="cpu", batch_size=16).value
    rows = alignment.evaluate_alignment({}, {"clip_patched": visual}, head, multilabel, data, name="eurosat_ms",
                                        split="test", device=torch.device("cpu"), batch_size=16)
    stage2 = next(r["value"] for r in rows if r["metric"] == "top1")
    assert sweep == stage0 == stage2
    direct = evaluate_zeroshot(ImageClassifier(visual, head), DataLoader(data, batch_size=16), "rgb", multilabel, "cpu")
    assert direct["top1"] == sweep

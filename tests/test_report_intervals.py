"""The chapters' tables with 95 % intervals, the selected α over seeds and the probe-protocol table."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mtmg.book import report
from mtmg.evaluation import intervals, metrics


def _emb(n=40, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(c, 16, generator=g), dim=1)
    targets = torch.arange(n) % c
    noisy = lambda s: text[targets] * s + torch.randn(n, 16, generator=g)  # noqa: E731
    return SimpleNamespace(targets=targets, multilabel=False, class_text=text, alpha=0.6, rgb_zeroshot=noisy(0.3),
                           rgb_patched=noisy(1.5), ms_student=noisy(1.0))


def test_headline_intervals_match_the_zero_shot_scores_and_the_interval_function():
    emb = _emb()
    table = report.headline_intervals(emb, n_boot=200).set_index("quantity")
    patched = table.loc["CLIP patched (α = 0.6) on RGB, top-1 accuracy"]
    logits = 100 * torch.nn.functional.normalize(emb.rgb_patched, dim=1) @ emb.class_text.T
    assert patched["value"] == pytest.approx(100 * metrics.top1_accuracy(logits, emb.targets), abs=0.01)
    found = intervals.hit_interval(intervals.top1_hits(logits, emb.targets), n_boot=200).scaled(100)
    assert (patched["low"], patched["high"]) == pytest.approx((found.low, found.high), abs=0.01)
    recall = table.loc["RGB↔MS recall@1, ms→rgb"]
    assert recall["value"] == pytest.approx(100 * metrics.recall_at_k(emb.ms_student, emb.rgb_patched, [1])[1],
                                            abs=0.01)
    gain = table.loc["patched − zero-shot (paired)"]
    assert gain["unit"] == "points" and gain["low"] <= gain["value"] <= gain["high"]
    shown = report.interval_table(report.headline_intervals(emb, n_boot=200), "2")
    assert list(shown.columns) == ["value", report.INTERVAL_COLUMN, "test tiles"] and len(shown) == 3
    assert shown.iloc[2]["value"].endswith(" points") and shown.iloc[2]["value"][0] in "+-"


def test_alpha_over_seeds_names_each_seed_and_the_range():
    text = report.alpha_over_seeds({0: 0.6, 1: 0.3})
    assert "0.6 (seed 0)" in text and "0.3 (seed 1)" in text and "from 0.3 to 0.6" in text
    assert "same α" in report.alpha_over_seeds({0: 0.5, 1: 0.5})


def test_probe_protocols_table_and_plain_words():
    rng = np.random.default_rng(0)
    n, c = 50, 5
    y = np.arange(n) % c
    good = np.eye(c)[y] * 3 + rng.normal(size=(n, c))
    bad = rng.normal(size=(n, c))
    scores = {"d/targets": y}
    for name, s in (("student", good), ("student_init", bad), ("clip_patched", good), ("clip_zeroshot", bad),
                    ("bands", bad)):
        scores[f"d/{name}/0/0"] = s
        scores[f"d/{name}@clip_benchmark/0/0"] = good if name != "bands" else bad
    results = pd.DataFrame({"dataset": ["d"]})
    long = report.probe_protocols(results, scores, n_boot=200)
    assert set(long["protocol"]) == {"mtmg", "clip_benchmark"}
    diff = long[(long["protocol"] == "mtmg") & (long["encoder"] == report.DIFFERENCE_ROW)].iloc[0]
    assert diff["low"] > 0
    same = long[(long["protocol"] == "clip_benchmark") & (long["encoder"] == report.DIFFERENCE_ROW)].iloc[0]
    assert same["value"] == 0
    shown = report.protocols_table(long)
    assert list(shown.columns) == ["mtmg probe", "CLIP_benchmark protocol"] and len(shown) == 6
    words = report.summarize_protocols(long)
    assert "mtmg probe: the band statistics score" in words and "**ahead of**" in words
    assert "cannot be told apart" in words and "clearly above them: student (aligned) on MS" in words


def test_results_command_and_thread_settings_refuse_bad_values(capsys):
    from mtmg.cli import main
    from mtmg.core.errors import ArgumentError, ConfigError
    from mtmg.runs import profiles

    assert main(["results", "--seeds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "mtmg results: error: --seeds [-1]: expected seeds >= 0"
    with pytest.raises(ArgumentError, match="threads"):
        profiles.load_profile("default", threads=0)
    with pytest.raises(ConfigError, match="threads"):
        profiles.load_profile("default", overrides={"align.threads": 0})
    with pytest.raises(ConfigError, match="threads"):
        profiles.load_profile("default", overrides={"patch.threads": "auto"})


def test_chapter_5_summary_gives_the_patching_gain_its_interval():
    emb = _emb()
    emb.dataset, emb.root = "eurosat_ms", "data/eurosat_ms_sample"
    label = report.dataset_label(emb.dataset, emb.root)
    gains = pd.DataFrame([{"dataset": label, "role": "remote sensing", "metric": "top-1 accuracy",
                           "gain (points)": 30.0, "paper's gain (points)": np.nan}])
    no_alignment = pd.DataFrame(columns=["split", "metric", "dataset", "model", "modality", "value"])
    text = report.summarize_benchmarks("default", gains, no_alignment, emb)
    gain = report.headline_intervals(emb).set_index("quantity").loc["patched − zero-shot (paired)"]
    assert f"95 % paired interval {gain['low']:+.1f} to {gain['high']:+.1f}" in text
    assert "interval" not in report.summarize_benchmarks("default", gains, no_alignment)

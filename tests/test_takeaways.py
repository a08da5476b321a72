"""Takeaways written from a run's numbers: no difference inside its interval is called a gain, the training
curve is read beyond its end points, the gap result is set beside Liang et al.'s; and the frame around them
(one colour per model, readable gap table, the banner's student)."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mtmg.book import figures, report, takeaways, views
from mtmg.evaluation.intervals import Interval
from mtmg.runs import profiles


def test_a_difference_inside_its_interval_is_never_called_a_gain():
    noise = takeaways.difference_sentence("The student", "its initial weights", Interval(2.0, -14.0, 20.0, 50))
    assert "cannot be told apart" in noise and "**above**" not in noise and "includes zero" in noise
    clear = takeaways.difference_sentence("The student", "its initial weights", Interval(12.0, 4.0, 20.0, 50))
    assert "is **above** its initial weights by 12.0 points" in clear
    below = takeaways.difference_sentence("A", "B", Interval(-6.0, -10.0, -2.0, 50))
    assert "**below**" in below


def test_a_score_is_above_chance_only_when_its_interval_is():
    assert "**above** chance" in takeaways.chance_sentence("X", Interval(30.0, 18.0, 42.0, 50), 10.0)
    assert "cannot tell it from chance" in takeaways.chance_sentence("X", Interval(14.0, 6.0, 24.0, 50), 10.0)


def _probe_frames(clear: bool):
    results = pd.DataFrame({"dataset": ["eurosat_ms"] * 2, "model": ["student", "student_init"], "shots": [0, 0],
                            "metric": ["top1"] * 2, "value": [0.64, 0.62], "n_test": [50, 50]})
    low, high = (4.0, 20.0) if clear else (-14.0, 20.0)
    differences = pd.DataFrame({"dataset": ["eurosat_ms"], "shots": ["all"], "difference": [2.0], "low": [low],
                                "high": [high], "n_test": [50], "clear": [clear]})
    return results, differences


def test_chapter_5_does_not_bold_a_probe_difference_its_interval_calls_noise():
    from mtmg.evaluation.probe import ALL

    results, differences = _probe_frames(clear=False)
    results["shots"] = ALL
    text = report.summarize_probe(results, differences)
    assert "**above**" not in text and "cannot be told apart" in text
    results, differences = _probe_frames(clear=True)
    results["shots"] = ALL
    assert "**above**" in report.summarize_probe(results, differences)


def test_the_curve_is_read_beyond_its_first_and_last_values():
    steps = np.arange(200)
    converged = pd.DataFrame({"step": steps, "loss": 2.0 * np.exp(-steps / 15) + 0.1})
    text = " ".join(takeaways.curve_sentences(converged))
    assert "Nine tenths of that decrease were reached by step" in text and "flat" in text
    falling = pd.DataFrame({"step": steps, "loss": 2.0 - steps / 150})
    assert "still falling" in " ".join(takeaways.curve_sentences(falling))
    assert "too few" in takeaways.curve_sentences(converged.head(4))[0]


def _embeddings(n=60, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    class_text = rng.normal(size=(classes, 16))
    labels = rng.integers(0, classes, n)
    rgb = class_text[labels] + rng.normal(scale=0.8, size=(n, 16)) + 3.0  # a shared offset: a gap to the text
    ms = rgb + rng.normal(scale=0.3, size=(n, 16))
    text = np.repeat(class_text, 2, axis=0) + rng.normal(scale=0.1, size=(2 * classes, 16))
    t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    return SimpleNamespace(text=t(text), class_text=t(class_text), rgb_patched=t(rgb), rgb_zeroshot=t(rgb + 0.5),
                           ms_student=t(ms), targets=torch.as_tensor(labels), labels=labels,
                           ids=[str(i) for i in range(n)],
                           classnames=[f"c{i}" for i in range(classes)], dataset="eurosat_ms", split="test",
                           multilabel=False, logit_scale=10.0, alpha=0.5, root="")


def test_chapter_3_and_4_takeaways_use_paired_intervals_and_cite_liang():
    emb = _embeddings()
    three = takeaways.chapter3(emb, None)
    assert "Goal 2" in three and "Goal 3" in three and "95 % interval" in three
    gaps = report.gap_table(emb.text, emb.rgb_zeroshot, emb.rgb_patched, emb.ms_student)
    four = takeaways.chapter4(emb, gaps)
    assert "Liang et al. report +2.35 points on EuroSAT" in four
    assert "gap closed" in four and ("cannot be told apart" in four or "a difference these test tiles resolve" in four)


def test_summarize_benchmarks_claims_no_win_over_the_teacher_without_an_interval():
    align = pd.DataFrame({"dataset": ["eurosat_ms"] * 2, "split": ["test"] * 2, "model": ["student", "clip_patched"],
                          "modality": ["ms", "rgb"], "metric": ["top1"] * 2, "value": [0.62, 0.58]})
    gains = pd.DataFrame(columns=["dataset", "role", "metric", "gain (points)", "paper's gain (points)"])
    text = report.summarize_benchmarks("default", gains, align)
    assert "beats" not in text and "no gain is claimed" in text
    with_emb = report.summarize_benchmarks("default", gains, align, _embeddings())
    assert "95 % interval" in with_emb


def test_chapter_1_reads_scores_against_chance_from_the_confusion_matrix():
    cm = np.diag([5, 4, 0, 1, 5])
    cm[2, 0] = 5
    entry = {"dataset": "eurosat_rgb", "root": "", "role": "remote sensing", "multilabel": False, "metric": "top1",
             "value": 15 / 25, "chance": 0.2, "confusion_matrix": cm.tolist(), "classes": list("ABCDE"),
             "per_class": [1.0, 1.0, 0.0, 0.2, 1.0], "n_samples": 25, "split": "test"}
    spectra = pd.DataFrame(np.tile(np.linspace(0.05, 0.3, 13), (2, 1)) * np.array([[1.0], [2.0]]),
                           index=["A", "B"], columns=[f"B{i:02d}" for i in range(1, 14)])
    spectra = spectra.rename(columns={"B13": "B8A"})
    text = takeaways.chapter1({"datasets": [entry]}, spectra)
    assert "**above** chance" in text and "1 of 5 classes are never recognised (C)" in text
    assert "C taken for A (5 tiles of 5)" in text


def test_one_colour_per_model_across_figures():
    student = {figures.model_colour(label) for label in ("student (aligned) on MS", "aligned student", "MS, student")}
    assert student == {figures.MODEL_COLOURS["student"]}
    assert figures.model_colour("text (class prompts)") == figures.MODEL_COLOURS["text"]
    assert figures.model_colour("CLIP zero-shot on RGB") == figures.model_colour("zero-shot (α=0)") \
        == figures.model_colour("RGB, zero-shot CLIP") == figures.MODEL_COLOURS["zero-shot CLIP"]
    assert figures.model_colour("CLIP patched (teacher) on RGB") == figures.model_colour("selected (α=0.6)") \
        == figures.model_colour("RGB, patched CLIP") == figures.MODEL_COLOURS["patched CLIP"]
    assert figures.model_colour("student before alignment on MS") == figures.model_colour("student before training")
    assert len(set(figures.MODEL_COLOURS.values())) == len(figures.MODEL_COLOURS)
    assert not set(figures.MODEL_COLOURS.values()) & {c.upper() for c in figures.EUROSAT_COLOURS.values()}
    with pytest.raises(KeyError, match="no model colour"):
        figures.model_colour("a satellite")


def test_gap_bars_keep_their_legend_off_the_bars_and_the_gap_table_is_plain():
    emb = _embeddings()
    gaps = report.gap_table(emb.text, emb.rgb_zeroshot, emb.rgb_patched, emb.ms_student)
    fig = figures.gap_bars(gaps)
    assert fig.legends and not fig.axes[0].get_legend()
    view = views.gap_view(gaps)
    assert not view.isin(["nan", "NaN"]).any().any() and "—" in view.to_numpy()
    assert all("_" not in c for header in view.columns for c in header)


def test_per_class_legend_names_red_only_when_a_class_is_below_chance():
    def labels(values):
        fig = figures.per_class_scores(list("AB"), values, "t", chance=0.5)
        return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "below chance" in labels([0.2, 0.9])
    assert "below chance" not in labels([0.6, 0.9])
    fig = figures.per_class_scores(list("AB"), [0.0, 0.9], "t", chance=0.5)  # a zero-length bar: its name is red
    assert {t.get_text(): t.get_color() for t in fig.axes[0].get_yticklabels()}["A"] == figures.WRONG


def test_the_banner_names_the_students_real_size():
    student = profiles.load_profile("default").describe()["student"]
    assert "4 layers, width 128, 64 px input" in student


def test_cosine_summary_gives_the_angle_and_the_spread():
    text = views.cosine_summary(np.full(20, np.cos(np.radians(30))), 0.6)
    assert "a turn of about 30°" in text and "every image moved by about the same angle" in text


def test_chapter_2_calls_the_patching_change_a_gain_only_with_an_interval_that_excludes_zero():
    rows = [(task, split, alpha, "top1", value) for split in ("val", "test")
            for task, values in (("eurosat_rgb", (0.2, 0.4, 0.6)), ("synthetic", (0.8, 0.7, 0.5)))
            for alpha, value in zip((0.0, 0.5, 1.0), values)]
    scores = pd.DataFrame(rows, columns=["task", "split", "alpha", "metric", "value"])
    plain = takeaways.chapter2(scores, 0.5, None)
    assert "changed by +20.0 points at α = 0.5" in plain and "neither a gain nor a loss" in plain
    noisy = takeaways.chapter2(scores, 0.5, None, Interval(20.0, -2.0, 40.0, 50))
    assert "cannot be told apart" in noisy and "**above**" not in noisy
    clear = takeaways.chapter2(scores, 0.5, None, Interval(20.0, 8.0, 32.0, 50))
    assert "is **above** its zero-shot score by 20.0 points" in clear
    headline = pd.DataFrame({"quantity": ["patched − zero-shot (paired)"], "value": [20.0], "low": [8.0],
                             "high": [32.0], "test tiles": [50]})
    assert takeaways.headline_interval(headline, "patched − zero-shot") == Interval(20.0, 8.0, 32.0, 50)
    with pytest.raises(KeyError, match="no headline interval"):
        takeaways.headline_interval(headline, "student")

"""Tables, summaries, banner and reference numbers of mtmg.book.report, and the figures of mtmg.book.figures,
on small constructed results."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from mtmg.book import figures, report
from mtmg.core.config import PatchConfig


def _entry(dataset, role, value, per_class, cm=None, multilabel=False, root=""):
    classes = [f"C{i}" for i in range(len(per_class))]
    return {"dataset": dataset, "root": root, "split": "test", "role": role, "multilabel": multilabel,
            "classes": classes, "classnames": [c.lower() for c in classes], "templates": ["{c}"],
            "n_samples": 40, "metric": "macro_ap" if multilabel else "top1", "value": value,
            "chance": None if multilabel else 1 / len(per_class), "per_class": per_class, "confusion_matrix": cm}


CM = [[8, 2, 0, 0], [0, 0, 10, 0], [1, 0, 9, 0], [0, 3, 0, 7]]  # class C1 is never right, taken for C2
ZEROSHOT = {"model": "M", "weights": "w", "datasets": [
    _entry("eurosat_ms", "remote sensing", 24 / 40, [0.8, 0.0, 0.9, 0.7], CM),
    _entry("synthetic", "supported", 0.75, [0.7, 0.8, 0.75, 0.75], None)]}


def _scores():
    rows = []
    for alpha in (0.0, 0.5, 1.0):
        for split in ("val", "test"):
            rows.append({"task": "eurosat_ms", "split": split, "alpha": alpha, "metric": "top1",
                         "value": 0.2 + 0.6 * alpha})
            rows.append({"task": "synthetic", "split": split, "alpha": alpha, "metric": "top1",
                         "value": 0.7 - 0.3 * alpha ** 2})
    return pd.DataFrame(rows)


def _align_results():
    rows = [("clip_patched", "rgb", "top1", 0.6), ("clip_zeroshot", "rgb", "top1", 0.2),
            ("student", "ms", "top1", 0.7), ("student_init", "ms", "top1", 0.1)]
    out = [{"model": m, "modality": mod, "dataset": "eurosat_ms", "split": "test", "metric": met, "value": v}
           for m, mod, met, v in rows]
    for model, r1 in (("student", 0.3), ("student_init", 0.02)):
        for direction in ("ms->rgb", "rgb->ms"):
            for k in (1, 5, 10):
                out.append({"model": model, "modality": direction, "dataset": "eurosat_ms", "split": "test",
                            "metric": f"recall@{k}", "value": min(1.0, r1 * k)})
    out.append({"model": "student", "modality": "ms", "dataset": "eurosat_ms", "split": "val", "metric": "top1",
                "value": 0.99})
    return pd.DataFrame(out)


# --- banner and references --------------------------------------------------------------------------------

def test_banner_names_the_run_and_warns_under_default():
    text = report.banner("default", "MiniCLIP-64", "mini weights", ["eurosat_ms (test)"], "cpu", "vit (13 bands)")
    assert text.startswith(f"> **{report.BANNER_TITLE}: `default`**")
    for part in ("MiniCLIP-64", "mini weights", "eurosat_ms (test)", "`cpu`", "vit (13 bands)",
                 "not the paper's numbers"):
        assert part in text
    paper = report.banner("paper", "ViT-B-32", "openai", ["bigearthnet19"], "cuda")
    assert "not the paper's numbers" not in paper and "ViT-B-32" in paper
    assert all(line.startswith(">") for line in paper.splitlines())


def test_reference_numbers_are_the_published_ones_with_sources():
    gains = {r.dataset: r.value for r in report.PAPER_GAINS}
    assert gains == {"BigEarthNet-5": 39.76, "BigEarthNet-19": 56.86, "BigEarthNet-43": 28.43, "SEN12MS": 20.61,
                     "EuroSAT": 5.98}
    base = {(r.model, r.dataset): r.value for r in report.CLIP_BASELINES}
    assert base[("ViT-B-32 openai", "EuroSAT")] == 50.72 and base[("ViT-B-32 openai", "RESISC45")] == 53.76
    assert base[("ViT-B-32 openai", "ImageNet")] == 63.33
    table = report.reference_table()
    assert len(table) == len(report.PAPER_GAINS) + len(report.CLIP_BASELINES) and table["source"].str.len().min() > 10


def test_dataset_labels():
    assert report.dataset_label("bigearthnet19") == "BigEarthNet-19"
    assert report.dataset_label("folder", "data/imagenet") == "ImageNet"
    assert report.dataset_label("folder", "/x/places/") == "places"
    assert report.dataset_label("unknown_set") == "unknown_set"


def test_settings_table_reads_dotted_keys():
    table = report.settings_table(PatchConfig(), ["train.lr", "supported.0.name", "clip.name"])
    assert table.loc["supported.0.name", "value"] == "synthetic"
    assert table.loc["train.lr", "value"] == repr(PatchConfig().train.lr)


# --- chapter 1 --------------------------------------------------------------------------------------------

def test_zeroshot_table():
    table = report.zeroshot_table(ZEROSHOT)
    assert list(table["score (%)"]) == [60.0, 75.0] and list(table["chance (%)"]) == [25.0, 25.0]
    assert list(table["dataset"]) == ["EuroSAT", "synthetic scenes"]


def test_most_confused_and_per_class_table():
    entry = ZEROSHOT["datasets"][0]
    assert report.most_confused(entry, 2) == [("C1", "C2", 10), ("C3", "C1", 3)]
    table = report.per_class_table(entry)
    assert list(table["class"]) == ["C1", "C3", "C0", "C2"] and table["accuracy (%)"].iloc[0] == 0.0
    assert report.first_entry(ZEROSHOT)["dataset"] == "eurosat_ms"
    with pytest.raises(ValueError):
        report.first_entry(ZEROSHOT, multilabel=True)


# --- chapter 2 --------------------------------------------------------------------------------------------

def test_alpha_and_before_after_tables():
    scores = _scores()
    table = report.alpha_table(scores, "val")
    assert table.loc[0.5, "EuroSAT"] == 50.0 and table.loc[1.0, "mean"] == pytest.approx((80 + 40) / 2)
    ba = report.before_after(scores, alpha=0.5, paper_alpha=0.5)
    assert ba.loc["EuroSAT", "zero-shot (α=0)"] == 20.0 and ba.loc["EuroSAT", "fine-tuned (α=1)"] == 80.0
    assert ba.loc["EuroSAT", "change at α=0.5 (points)"] == 30.0
    assert ba.loc["synthetic scenes", "selected (α=0.5)"] == 62.5
    missing = report.before_after(scores, alpha=0.3)
    assert missing["selected (α=0.3)"].isna().all()


# --- chapter 3 --------------------------------------------------------------------------------------------

def test_alignment_tables():
    results = _align_results()
    scores = report.alignment_scores(results)
    assert scores.loc["student (aligned) on MS", "EuroSAT"] == 70.0
    assert scores.loc["CLIP patched (teacher) on RGB", "EuroSAT"] == 60.0
    rec = report.retrieval_table(results)
    assert rec.loc[("EuroSAT", "ms->rgb"), "R@5"] == 100.0 and list(rec.columns) == ["R@1", "R@5", "R@10"]
    pts = report.recall_points(results, "eurosat_ms")
    assert set(pts["model"]) == {"student before training"} and len(pts) == 6


def test_retrieval_curve_matches_recall_at_k():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 6, generator=g)
    curve = report.retrieval_curve(a, a + 0.5 * torch.randn(20, 6, generator=g))
    assert set(curve["direction"]) == {"ms->rgb", "rgb->ms"} and len(curve) == 40
    for _, part in curve.groupby("direction"):
        assert part["recall"].is_monotonic_increasing and part["recall"].iloc[-1] == 1.0
    assert curve["chance"].iloc[0] == pytest.approx(1 / 20)
    exact = report.retrieval_curve(a, a, ks=[1])
    assert (exact["recall"] == 1.0).all()


# --- chapter 4 --------------------------------------------------------------------------------------------

def _clusters(n=30, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    text = torch.randn(10, d, generator=g) + 3 * torch.randn(d, generator=g)
    zs = torch.randn(n, d, generator=g) + 3 * base
    patched = zs + 0.3 * torch.randn(n, d, generator=g)
    ms = patched + 0.1 * torch.randn(n, d, generator=g)
    return text, zs, patched, ms


def test_gap_tables_and_takeaways():
    text, zs, patched, ms = _clusters()
    gaps = report.gap_table(text, zs, patched, ms)
    assert list(gaps.index) == ["CLIP zero-shot", "CLIP patched", "student (MS) + teacher (RGB)"]
    assert np.isnan(gaps.loc["CLIP zero-shot", "gap_text_ms"]) and gaps.iloc[2]["gap_rgb_ms"] < 0.2
    cross = report.cross_model_gaps(zs, patched, ms)
    assert cross.loc["RGB patched ↔ MS student", "centroid gap"] < cross.loc["RGB zero-shot ↔ MS student",
                                                                            "centroid gap"]
    from mtmg.book import takeaways

    emb = SimpleNamespace(multilabel=True)  # the gap sentences only; no zero-shot shift for multi-label data
    summary = takeaways.chapter4(emb, gaps, cross)
    assert "It is closer to the patched tower" in summary and f"{gaps.iloc[2]['gap_rgb_ms']:.2f}" in summary


def test_shift_experiment_spans_the_gap():
    text, zs, _, _ = _clusters()
    labels = np.arange(30) % 10
    shift = report.shift_experiment(zs, text, labels, steps=5)
    top1 = shift[shift["metric"] == "top1"]
    assert len(top1) == 5 and top1["lambda"].iloc[2] == 0.0 and top1["lambda"].iloc[0] == -top1["lambda"].iloc[-1]
    assert "at λ = 0" in report.shift_summary(shift)


# --- chapter 5 --------------------------------------------------------------------------------------------

def test_gains_and_benchmark_tables():
    patched = {"datasets": [dict(ZEROSHOT["datasets"][0], value=0.8), dict(ZEROSHOT["datasets"][1], value=0.7)]}
    gains = report.gains_table(ZEROSHOT, patched)
    assert list(gains["gain (points)"]) == [20.0, -5.0]
    assert gains["paper's gain (points)"].iloc[0] == 5.98 and np.isnan(gains["paper's gain (points)"].iloc[1])
    text, zs, pt, ms = _clusters()
    table = report.benchmark_table("default", ZEROSHOT, patched, _scores(), 0.5, _align_results(),
                                   report.gap_table(text, zs, pt, ms))
    assert (table["profile"] == "default").all()
    assert set(table["chapter"]) == {"1 zero-shot", "2 patching", "3 alignment", "4 modality gap"}
    row = table[(table["chapter"] == "3 alignment") & (table["model"] == "student (aligned) on MS")]
    assert list(row["value"]) == [70.0], "validation rows are not reported"
    summary = report.summarize_benchmarks("default", gains, _align_results())
    assert "+20.0 points (paper: +5.98" in summary and "no gain is claimed" in summary
    assert "directions" in summary and "directions" not in report.summarize_benchmarks("paper", gains,
                                                                                       _align_results())


# --- figures ----------------------------------------------------------------------------------------------

def _png(fig: Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _check(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes), "figures need a title"
    labelled = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]
    assert labelled, "figures need labelled axes"
    image = _png(fig)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 5


class _Tile:
    def __init__(self, seed, name):
        rng = np.random.default_rng(seed)
        self.array13 = rng.integers(0, 4000, (13, 16, 16)).astype(np.uint16)
        self.classname, self.level, self.id = name, "L1C", name


def test_figures_render():
    tiles = [_Tile(i, f"C{i}") for i in range(3)]
    _check(figures.tile_views(tiles))
    spectra = pd.DataFrame(np.random.default_rng(0).random((3, 13)), index=["a", "b", "c"],
                           columns=list(__import__("mtmg.data.sentinel2").data.sentinel2.SSL4EO_BANDS))
    _check(figures.class_spectra(spectra))
    _check(figures.zeroshot_scores(report.zeroshot_table(ZEROSHOT)))
    entry = ZEROSHOT["datasets"][0]
    _check(figures.per_class_scores(entry["classes"], entry["per_class"], "t", chance=0.25))
    _check(figures.confusion(entry["confusion_matrix"], entry["classes"], "t"))
    _check(figures.alpha_sweep(_scores(), 0.5, 0.5))
    _check(figures.before_after(report.before_after(_scores(), 0.5)))
    log = pd.DataFrame({"step": range(1, 31), "loss": np.linspace(2, 0.5, 30), "lr": 1e-3,
                        "feature_loss": np.linspace(1, 0.1, 30)})
    _check(figures.training_curves(log, ["loss", "feature_loss"]))
    _check(figures.model_scores(report.alignment_scores(_align_results())))
    a = torch.randn(10, 4)
    _check(figures.recall_curves(report.retrieval_curve(a, a + torch.randn(10, 4)),
                                 report.recall_points(_align_results(), "eurosat_ms")))
    text, zs, pt, ms = _clusters()
    _check(figures.gap_bars(report.gap_table(text, zs, pt, ms)))
    _check(figures.cosine_histogram(np.random.default_rng(0).random(40)))
    _check(figures.shift_curves(report.shift_experiment(zs, text, np.arange(30) % 10, steps=5)))
    _check(figures.gains_comparison(report.gains_table(ZEROSHOT, ZEROSHOT), "default"))
    _check(figures.bands_used())


def test_training_curves_name_a_missing_column():
    with pytest.raises(KeyError, match="feature_loss"):
        figures.training_curves(pd.DataFrame({"step": [1], "loss": [1.0], "lr": [1.0]}), ["feature_loss"])


def test_false_colour_puts_near_infrared_in_red():
    array = np.zeros((13, 2, 2), dtype=np.uint16)
    array[7] = 7116  # B08 at twice the L1C white point -> 255
    rgb = figures.false_colour(array, "L1C")
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()


def test_retrieval_examples_figure_marks_hits():
    from mtmg.book.views import RetrievalExample

    tiles = {f"C{i}": _Tile(i, f"C{i}") for i in range(4)}
    ex = [RetrievalExample("C0", 0, ["C0", "C1", "C2"], [0, 1, 0], [0.9, 0.5, 0.4], 0)]
    fig = figures.retrieval_examples(ex, tiles, ["zero", "one"])
    colours = [ax.spines["top"].get_edgecolor() for ax in fig.axes[1:4]]
    green, red = (0x1a / 255, 0x98 / 255, 0x50 / 255, 1.0), (0xd7 / 255, 0x30 / 255, 0x27 / 255, 1.0)
    assert [tuple(np.round(c, 3)) for c in colours] == [tuple(np.round(x, 3)) for x in (green, red, green)]
    assert "(self)" in fig.axes[1].get_title()
    _check(fig)

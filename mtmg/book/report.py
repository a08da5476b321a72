"""Tables, run summaries and the reference numbers of the book's chapters.

Everything here is computed from the result files of a run (see :mod:`mtmg.runs.pipeline`); summaries
are Markdown strings (CommonMark: paragraphs, emphasis and lists only) to show with
``IPython.display.Markdown``. Scores are fractions in the result files and percentages in tables.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtmg.core.config import to_dict
from mtmg.evaluation import gap, intervals
from mtmg.evaluation.baselines import BAND_STATISTICS, LABELS, protocol_name
from mtmg.evaluation.gap import gap_magnitude, gap_summary, modality_gap
from mtmg.evaluation.intervals import Interval
from mtmg.evaluation.metrics import (
    PRIMARY_METRIC,
    authors_macro_average_precision,
    macro_average_precision,
    recall_at_k,
)
from mtmg.evaluation.probe import ALL, ENCODERS, scores_name

BANNER_TITLE = "Run profile"
DEFAULT_PROFILE_NOTE = ("These numbers come from the embedded miniature (MiniCLIP pretrained on procedural "
                        "scenes, 200 real EuroSAT tiles, a small student, CPU). They are not the paper's numbers "
                        "and are not comparable to them.")
PAPER_PROFILE_NOTE = "Paper profile: the settings of Zavras et al. (open_clip ViT-B-32, OpenAI weights, full datasets)."


# --- reference numbers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """A number reported elsewhere, with where it comes from."""

    source: str
    model: str
    dataset: str
    quantity: str
    value: float
    unit: str


PAPER = "Zavras et al., arXiv 2402.09816v2, abstract"
_ABSTRACT_MODEL = "patched CLIP (backbone not named in the abstract)"
CLIP_BENCHMARK = "CLIP_benchmark (LAION-AI), zero-shot classification results"
GAP_PAPER = "Liang et al., NeurIPS 2022 (Mind the Gap)"

PAPER_GAINS: tuple[Reference, ...] = (
    Reference(PAPER, _ABSTRACT_MODEL, "BigEarthNet-5", "gain from patching (RGB zero-shot)", 39.76, "mAP points"),
    Reference(PAPER, _ABSTRACT_MODEL, "BigEarthNet-19", "gain from patching (RGB zero-shot)", 56.86, "mAP points"),
    Reference(PAPER, _ABSTRACT_MODEL, "BigEarthNet-43", "gain from patching (RGB zero-shot)", 28.43, "mAP points"),
    Reference(PAPER, _ABSTRACT_MODEL, "SEN12MS", "gain from patching (RGB zero-shot)", 20.61, "mAP points"),
    Reference(PAPER, _ABSTRACT_MODEL, "EuroSAT", "gain from patching (RGB zero-shot)", 5.98, "accuracy points"),
)
"""Gains from patching reported in the paper's abstract. The abstract names no backbone; its mAP gains
were measured with the authors' AP convention (:func:`mtmg.evaluation.metrics.authors_macro_average_precision`),
which scores bf16 ``100 * cos`` logits near the class prevalence, so their zero-shot baselines were
probably near chance and the gains larger than the correct AP would give."""

PAPER_TABLE4 = "Zavras et al., Table 4 (linear probe on BigEarthNet-5)"
PAPER_PROBE: tuple[Reference, ...] = (
    Reference(PAPER_TABLE4, "aligned 13-band ViT-S/16 (linear probe)", "BigEarthNet-5", "linear-probe mAP", 90.39, "%"),
    Reference(PAPER_TABLE4, "DOFA ViT-L (linear probe)", "BigEarthNet-5", "linear-probe mAP", 80.47, "%"),
)
"""The paper's linear-probe numbers (authors' AP convention) shown beside the probe stage's results."""

CLIP_BASELINES: tuple[Reference, ...] = (
    Reference(CLIP_BENCHMARK, "ViT-B-32 openai", "EuroSAT", "zero-shot top-1", 50.72, "%"),
    Reference(CLIP_BENCHMARK, "ViT-B-32 openai", "RESISC45", "zero-shot top-1", 53.76, "%"),
    Reference(CLIP_BENCHMARK, "ViT-B-32 openai", "ImageNet", "zero-shot top-1", 63.33, "%"),
    Reference(CLIP_BENCHMARK, "ViT-L-14 openai", "EuroSAT", "zero-shot top-1", 62.67, "%"),
    Reference(CLIP_BENCHMARK, "ViT-L-14 openai", "RESISC45", "zero-shot top-1", 63.52, "%"),
    Reference(CLIP_BENCHMARK, "ViT-L-14 openai", "ImageNet", "zero-shot top-1", 75.49, "%"),
)
"""Zero-shot baselines of OpenAI CLIP."""

GAP_REFERENCES: tuple[Reference, ...] = (
    Reference(GAP_PAPER, "CLIP ViT-B-32 openai", "MSCOCO", "image-text centroid gap", 0.82, "L2 distance"),
    Reference(GAP_PAPER, "CLIP ViT-B-32 openai", "EuroSAT", "zero-shot top-1, original gap", 54.10, "%"),
    Reference(GAP_PAPER, "CLIP ViT-B-32 openai", "EuroSAT", "zero-shot top-1, gap shifted", 56.45, "%"),
)
"""The modality-gap paper's numbers quoted in chapter 4."""

DATASET_LABELS = {
    "eurosat_ms": "EuroSAT", "eurosat_rgb": "EuroSAT", "resisc45": "RESISC45", "bigearthnet5": "BigEarthNet-5",
    "bigearthnet19": "BigEarthNet-19", "bigearthnet43": "BigEarthNet-43", "bigearthnet_v2": "BigEarthNet-19 (v2)",
    "sen12ms": "SEN12MS", "synthetic": "synthetic scenes",
}


def dataset_label(name: str, root: str = "") -> str:
    """Readable name of a registry dataset (``folder`` datasets are named after their folder)."""
    if name == "folder":
        folder = root.rstrip("/").rsplit("/", 1)[-1]
        return "ImageNet" if folder.lower() == "imagenet" else folder or "folder"
    return DATASET_LABELS.get(name, name)


def reference_table(refs: Sequence[Reference] = PAPER_GAINS + CLIP_BASELINES) -> pd.DataFrame:
    """The reference numbers as a table, one row each, with their source."""
    return pd.DataFrame([vars(r) for r in refs])[["dataset", "model", "quantity", "value", "unit", "source"]]


# --- banner ----------------------------------------------------------------------------------------------

def banner(profile: str, model: str, weights: str, data: Sequence[str], device: str, student: str | None = None,
           threads: int | None = None) -> str:
    """Markdown opening an executed chapter: what ran, on what, where (with the torch CPU threads the
    stages ran on, which shape the training results); a warning under ``default``."""
    on = f"device `{device}`" + (f", {threads} torch CPU thread{'s' if threads != 1 else ''}" if threads else "")
    lines = [f"> **{BANNER_TITLE}: `{profile}`** ({on})", ">",
             f"> - CLIP model: `{model}`; weights: {weights}"]
    if student:
        lines.append(f"> - multispectral student: {student}")
    lines.append("> - data: " + "; ".join(data))
    lines += [">", "> " + (DEFAULT_PROFILE_NOTE if profile == "default" else PAPER_PROFILE_NOTE
                          if profile == "paper" else f"Custom profile `{profile}`.")]
    return "\n".join(lines) + "\n"


def settings_table(cfg: Any, keys: Sequence[str]) -> pd.DataFrame:
    """Selected settings of a frozen config by dotted key (``"train.lr"``), as a two-column table."""
    data = to_dict(cfg)
    rows = []
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        rows.append({"setting": key, "value": node if isinstance(node, str) else repr(node)})
    return pd.DataFrame(rows).set_index("setting")


# --- formatting ------------------------------------------------------------------------------------------

def pct(value: float | None, digits: int = 1) -> str:
    """``0.4567`` -> ``"45.7 %"``; None or NaN -> ``"n/a"``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f} %"


METRIC_NAMES = {"top1": "top-1 accuracy", "macro_ap": "macro AP", "macro_ap_authors": "macro AP, authors' convention"}
AUTHORS_COLUMN = "authors' AP convention (%)"
CONVENTIONS = ("Conventions: macro AP is the correct average precision (scikit-learn's) on fp32 logits, over the "
               "classes with at least one positive in the split; the authors' convention is torchmetrics on bf16 "
               "100·cos logits, which collapses toward the class prevalence and is shown only for comparison "
               "with the paper. Retrieval: ties count against the query.")
"""The caption every results table with AP or recall carries."""


# --- chapter 1: zero-shot --------------------------------------------------------------------------------

def zeroshot_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per dataset of a zero-shot results file: score and chance level in %.

    Multi-label rows also give the number of classes the macro AP averages over (classes without a
    positive in the split are left out) and the authors' AP convention (torchmetrics on bf16 logits,
    :func:`mtmg.evaluation.metrics.authors_macro_average_precision`), which is not the correct AP.
    """
    rows = [{"dataset": dataset_label(e["dataset"], e["root"]), "role": e["role"], "split": e["split"],
             "samples": e["n_samples"], "metric": METRIC_NAMES.get(e["metric"], e["metric"]),
             "score (%)": 100 * e["value"], "chance (%)": None if e["chance"] is None else 100 * e["chance"],
             "classes scored": e.get("classes_scored"),
             AUTHORS_COLUMN: None if e.get("value_authors") is None else 100 * e["value_authors"]}
            for e in results["datasets"]]
    return pd.DataFrame(rows).round(2)


def per_class_table(entry: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class scores (%) of one dataset entry, worst first."""
    name = "AP (%)" if entry["multilabel"] else "accuracy (%)"
    values = [np.nan if v is None else 100 * v for v in entry["per_class"]]
    table = pd.DataFrame({"class": entry["classes"], "prompt name": entry["classnames"], name: values})
    return table.sort_values(name, kind="stable").reset_index(drop=True).round(1)


def first_entry(results: Mapping[str, Any], role: str = "remote sensing", multilabel: bool | None = False
                ) -> Mapping[str, Any]:
    """The first dataset entry with ``role`` (and single-label, unless ``multilabel`` is None or True)."""
    for e in results["datasets"]:
        if e["role"] == role and (multilabel is None or e["multilabel"] == multilabel):
            return e
    raise ValueError(f"no {role!r} dataset{'' if multilabel is None else ' of that kind'} in the zero-shot results")


def most_confused(entry: Mapping[str, Any], n: int = 3) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal cells of a confusion matrix: (true class, predicted class, count)."""
    cm = np.asarray(entry["confusion_matrix"])
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    return [(entry["classes"][i], entry["classes"][j], int(off[i, j]))
            for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


# --- chapter 2: patching ---------------------------------------------------------------------------------

def alpha_table(scores: pd.DataFrame, split: str = "val") -> pd.DataFrame:
    """Scores (%) of every α on ``split``: one column per task, plus their mean (the PAINT criterion)."""
    rows = scores[scores["split"] == split]
    table = rows.pivot_table(index="alpha", columns="task", values="value", aggfunc="first", sort=False)
    table.columns = [dataset_label(c) for c in table.columns]
    table["mean"] = table.mean(axis=1)
    return (100 * table).round(2)


def before_after(scores: pd.DataFrame, alpha: float, paper_alpha: float = 0.5, split: str = "test") -> pd.DataFrame:
    """Per task on ``split``: zero-shot (α = 0), the selected α, the paper's α and full fine-tuning (α = 1), in %."""
    rows = scores[scores["split"] == split]
    if rows.empty:
        raise ValueError(f"no {split!r} rows in the patching scores")
    table = rows.pivot_table(index="task", columns="alpha", values="value", aggfunc="first", sort=False)
    wanted = {"zero-shot (α=0)": 0.0, f"selected (α={alpha:g})": alpha,
              f"authors' default (α={paper_alpha:g})": paper_alpha,
              "fine-tuned (α=1)": 1.0}
    out = pd.DataFrame(index=table.index)
    for name, a in wanted.items():
        match = [c for c in table.columns if abs(c - a) < 1e-9]
        out[name] = table[match[0]] if match else np.nan
    out = 100 * out
    out[f"change at α={alpha:g} (points)"] = out[f"selected (α={alpha:g})"] - out["zero-shot (α=0)"]
    out.index = [dataset_label(t) for t in out.index]
    out.index.name = "task"
    return out.round(2)


# --- chapter 3: alignment --------------------------------------------------------------------------------

MODEL_LABELS = {"clip_zeroshot": "CLIP zero-shot", "clip_patched": "CLIP patched (teacher)",
                "student_init": "student before training", "student": "student (aligned)"}


def alignment_scores(results: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Zero-shot scores (%) of the stage 2 models per dataset: teachers on RGB, students on MS. Multi-label
    datasets get a second column with the authors' AP convention (see :data:`CONVENTIONS`)."""
    rows = results[(results["split"] == split) & ~results["metric"].str.startswith("recall@")].copy()
    rows["model"] = [f"{MODEL_LABELS.get(m, m)} on {mod.upper()}" for m, mod in zip(rows["model"], rows["modality"])]
    rows["dataset"] = [dataset_label(d) + (" (authors' AP)" if m == "macro_ap_authors" else "")
                       for d, m in zip(rows["dataset"], rows["metric"])]
    table = rows.pivot_table(index="model", columns="dataset", values="value", aggfunc="first", sort=False)
    order = [f"{label} on {mod.upper()}" for key, label in MODEL_LABELS.items() for mod in ("rgb", "ms")]
    table = table.loc[sorted(table.index, key=lambda m: order.index(m) if m in order else len(order))]
    return (100 * table).round(2)


def retrieval_table(results: pd.DataFrame, split: str = "test", model: str = "student") -> pd.DataFrame:
    """Recall@k (%) of RGB↔MS retrieval per dataset and direction for ``model``."""
    rows = results[(results["split"] == split) & results["metric"].str.startswith("recall@")
                   & (results["model"] == model)].copy()
    rows["k"] = rows["metric"].str.removeprefix("recall@").astype(int)
    rows["dataset"] = [dataset_label(d) for d in rows["dataset"]]
    table = rows.pivot_table(index=["dataset", "modality"], columns="k", values="value", aggfunc="first")
    table.columns = [f"R@{k}" for k in table.columns]
    table.index = table.index.set_names(["dataset", "direction"])
    return (100 * table).round(2)


def retrieval_curve(query: Any, gallery: Any, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Paired recall@k for every k (default 1..N) in both directions, with the chance level k/N."""
    n = len(query)
    ks = list(ks) if ks is not None else list(range(1, n + 1))
    rows = []
    for direction, (q, g) in {"ms->rgb": (query, gallery), "rgb->ms": (gallery, query)}.items():
        rows += [{"direction": direction, "k": k, "recall": v, "chance": min(1.0, k / n)}
                 for k, v in recall_at_k(q, g, ks).items()]
    return pd.DataFrame(rows)


def recall_points(results: pd.DataFrame, dataset: str, models: Sequence[str] = ("student_init",),
                  split: str = "test") -> pd.DataFrame:
    """Recall@k rows of ``models`` on one dataset (columns model, direction, k, recall) for
    :func:`mtmg.book.figures.recall_curves`."""
    rows = results[(results["split"] == split) & (results["dataset"] == dataset)
                   & results["metric"].str.startswith("recall@") & results["model"].isin(models)]
    return pd.DataFrame({"model": [MODEL_LABELS.get(m, m) for m in rows["model"]], "direction": rows["modality"],
                         "k": rows["metric"].str.removeprefix("recall@").astype(int), "recall": rows["value"]})


# --- chapter 4: the modality gap -------------------------------------------------------------------------

def gap_table(text: Any, rgb_zeroshot: Any, rgb_patched: Any, ms_student: Any) -> pd.DataFrame:
    """:func:`mtmg.evaluation.gap.gap_summary` of zero-shot CLIP, patched CLIP and the student (with its
    teacher's RGB)."""
    models = {"CLIP zero-shot": {"text": text, "rgb": rgb_zeroshot},
              "CLIP patched": {"text": text, "rgb": rgb_patched},
              "student (MS) + teacher (RGB)": {"text": text, "rgb": rgb_patched, "ms": ms_student}}
    return gap_summary(models).round(4)


def cross_model_gaps(rgb_zeroshot: Any, rgb_patched: Any, ms_student: Any) -> pd.DataFrame:
    """Centroid gaps and mean paired cosine between the image sets of different models (same tiles)."""
    pairs = {"RGB zero-shot ↔ RGB patched": (rgb_zeroshot, rgb_patched),
             "RGB zero-shot ↔ MS student": (rgb_zeroshot, ms_student),
             "RGB patched ↔ MS student": (rgb_patched, ms_student)}
    rows = []
    for name, (a, b) in pairs.items():
        g = modality_gap(a, b, paired=True)
        rows.append({"pair": name, "centroid gap": g.magnitude, "mean paired cosine": g.mean_paired_cosine,
                     "mean paired distance": g.mean_paired_distance})
    return pd.DataFrame(rows).set_index("pair").round(4)


def shift_experiment(images: Any, class_text: Any, labels: Any, steps: int = 9) -> pd.DataFrame:
    """:func:`mtmg.evaluation.gap.shift_experiment` of images against the class text embeddings, with λ spanning
    the image↔text gap on both sides (``steps`` values from −gap to +gap)."""
    lambdas = np.linspace(-1.0, 1.0, steps) * gap_magnitude(images, class_text)
    return gap.shift_experiment(images, class_text, lambdas, labels=labels, names=("image", "text"))


def shift_summary(shift: pd.DataFrame) -> str:
    """One sentence on the shift experiment: accuracy at λ = 0 and the best λ."""
    top1 = shift[shift["metric"] == "top1"].sort_values("lambda")
    if top1.empty:
        return ""
    base = top1.iloc[(top1["lambda"].abs()).argmin()]
    best = top1.iloc[top1["value"].argmax()]
    return (f"Shifting RGB and text embeddings along the gap direction: zero-shot accuracy {pct(base['value'])} "
            f"at λ = 0, best {pct(best['value'])} at λ = {best['lambda']:.3f} (remaining gap {best['gap']:.3f}).")


# --- chapter 5: every number -----------------------------------------------------------------------------

def gains_table(zeroshot: Mapping[str, Any], patched: Mapping[str, Any]) -> pd.DataFrame:
    """Per dataset: zero-shot and patched CLIP (RGB) and the gain, beside the paper's reported gain."""
    paper = {r.dataset: r.value for r in PAPER_GAINS}
    after = {(e["dataset"], e["root"]): e for e in patched["datasets"]}
    rows = []
    for e in zeroshot["datasets"]:
        p = after.get((e["dataset"], e["root"]))
        if p is None:
            continue
        label = dataset_label(e["dataset"], e["root"])
        authors = (100 * (p["value_authors"] - e["value_authors"])
                   if p.get("value_authors") is not None and e.get("value_authors") is not None else np.nan)
        rows.append({"dataset": label, "role": e["role"], "metric": METRIC_NAMES.get(e["metric"], e["metric"]),
                     "zero-shot (%)": 100 * e["value"], "patched (%)": 100 * p["value"],
                     "gain (points)": 100 * (p["value"] - e["value"]),
                     "gain, authors' AP convention (points)": authors,
                     "paper's gain (points)": paper.get(label, np.nan)})
    return pd.DataFrame(rows).round(2)


def benchmark_table(profile: str, zeroshot: Mapping[str, Any], patched: Mapping[str, Any], scores: pd.DataFrame,
                    alpha: float, align_results: pd.DataFrame, gaps: pd.DataFrame) -> pd.DataFrame:
    """Every number of a run in one long table: chapter, quantity, dataset, model, value, unit, profile."""
    rows: list[dict[str, Any]] = []

    def add(chapter: str, quantity: str, dataset: str, model: str, value: float, unit: str) -> None:
        rows.append({"chapter": chapter, "quantity": quantity, "dataset": dataset, "model": model,
                     "value": round(float(value), 4), "unit": unit})

    for res, model in ((zeroshot, "CLIP zero-shot"), (patched, "CLIP patched")):
        for e in res["datasets"]:
            add("1 zero-shot" if model == "CLIP zero-shot" else "2 patching",
                f"{METRIC_NAMES.get(e['metric'], e['metric'])} ({e['split']})",
                dataset_label(e["dataset"], e["root"]), f"{model} on RGB", 100 * e["value"], "%")
            if e.get("value_authors") is not None:
                add("1 zero-shot" if model == "CLIP zero-shot" else "2 patching",
                    f"{METRIC_NAMES['macro_ap_authors']} ({e['split']})", dataset_label(e["dataset"], e["root"]),
                    f"{model} on RGB", 100 * e["value_authors"], "%")
    add("2 patching", "selected α (PAINT rule, validation)", "all tasks", "CLIP patched", alpha, "")
    for (task, split, a), value in scores.groupby(["task", "split", "alpha"])["value"].first().items():
        if split == "test" and (a in (0.0, 0.5, 1.0) or abs(a - alpha) < 1e-9):
            add("2 patching", f"test score at α={a:g}", dataset_label(task), "CLIP interpolated", 100 * value, "%")
    test = align_results[align_results["split"] == "test"]
    for r in test.itertuples(index=False):
        quantity = (f"{r.metric} {r.modality}" if r.metric.startswith("recall@")
                    else f"{METRIC_NAMES.get(r.metric, r.metric)} (test)")
        add("3 alignment", quantity, dataset_label(r.dataset), f"{MODEL_LABELS.get(r.model, r.model)}"
            + ("" if r.metric.startswith("recall@") else f" on {r.modality.upper()}"), 100 * r.value, "%")
    for model, row in gaps.iterrows():
        for col in ("gap_text_rgb", "gap_text_ms", "gap_rgb_ms"):
            if not np.isnan(row[col]):
                add("4 modality gap", col.replace("gap_", "centroid gap ").replace("_", "↔"), "test", model,
                    row[col], "L2 distance")
    out = pd.DataFrame(rows)
    out.insert(0, "profile", profile)
    return out


# --- the rule of the takeaways: a difference is a gain only when its interval excludes zero ------------------

def difference_sentence(subject: str, reference: str, interval: Interval, unit: str = "points") -> str:
    """``subject`` minus ``reference`` (``interval`` in ``unit``) in words: **above** or **below** only when
    the interval excludes zero, else "cannot be told apart" (never a gain)."""
    bounds = f"95 % interval {interval.low:+.1f} to {interval.high:+.1f}"
    if interval.clear:
        word = "above" if interval.value > 0 else "below"
        return (f"{subject} is **{word}** {reference} by {abs(interval.value):.1f} {unit} ({bounds}): "
                "a difference these test tiles resolve.")
    return (f"{subject} and {reference} cannot be told apart on these test tiles: the difference is "
            f"{interval.value:+.1f} {unit}, but its {bounds} includes zero, so it is no gain or loss.")


def head_hits(embeddings: Any, class_text: Any, targets: Any) -> np.ndarray:
    """Per test tile, whether CLIP's text head (``class_text``) puts its class first (1) or not (0)."""
    unit = gap.l2_normalize(embeddings)
    return intervals.top1_hits(unit @ gap.l2_normalize(class_text).T, np.asarray(targets))


def student_teacher_interval(emb: Any) -> Interval | None:
    """Zero-shot top-1 of the student on MS minus its teacher's on RGB (points) on the embedded test tiles, with
    the paired 95 % interval; None for multi-label data."""
    if emb.multilabel:
        return None
    targets = np.asarray(emb.targets)
    return intervals.hit_difference_interval(head_hits(emb.ms_student, emb.class_text, targets),
                                             head_hits(emb.rgb_patched, emb.class_text, targets)).scaled(100)


def summarize_benchmarks(profile: str, gains: pd.DataFrame, align_results: pd.DataFrame, emb: Any = None) -> str:
    """What chapter 5 observed, and how it relates to the paper's claims (directions only under ``default``).
    With ``emb`` (the test embeddings of chapter 3) the student is called above or below its teacher only when
    the paired interval on those tiles excludes zero, and the patching gain of that dataset gets its interval."""
    text = []
    rs = gains[gains["role"] == "remote sensing"]
    sup = gains[gains["role"] == "supported"]
    gain = (headline_intervals(emb).set_index("quantity").loc["patched − zero-shot (paired)"]
            if emb is not None else None)
    for _, r in rs.iterrows():
        paper = r["paper's gain (points)"]
        ref = "" if np.isnan(paper) else f" (paper: {paper:+.2f} points at paper scale)"
        sure = (f"; on the {int(gain['test tiles'])} embedded test tiles {gain['value']:+.1f} points, 95 % paired "
                f"interval {gain['low']:+.1f} to {gain['high']:+.1f}"
                if gain is not None and r["dataset"] == dataset_label(emb.dataset, emb.root) else "")
        text.append(f"- Patching changed {r['dataset']} zero-shot {r['metric']} by {r['gain (points)']:+.1f} "
                    f"points{sure}{ref}.")
    for _, r in sup.iterrows():
        text.append(f"- The supported task ({r['dataset']}) changed by {r['gain (points)']:+.1f} points "
                    f"(the paper's abstract reports ImageNet performance maintained).")
    test = align_results[(align_results["split"] == "test") & align_results["metric"].isin(PRIMARY_METRIC.values())]
    for dataset in dict.fromkeys(test["dataset"]):
        part = test[test["dataset"] == dataset].set_index(["model", "modality"])["value"]
        if ("student", "ms") in part and ("clip_patched", "rgb") in part:
            s, t = part[("student", "ms")], part[("clip_patched", "rgb")]
            found = student_teacher_interval(emb) if emb is not None and emb.dataset == dataset else None
            verdict = (difference_sentence("the aligned MS student", "patched CLIP on RGB", found) if found else
                       f"the aligned MS student scores {pct(s)} against {pct(t)} for patched CLIP on RGB (no interval "
                       "here, so no gain is claimed).")
            text.append(f"- On {dataset_label(dataset)} {verdict} The paper's abstract reports significant gains from "
                        "cross-modal alignment.")
    if profile == "default":
        text.append("")
        text.append("Under the default profile only the directions of these effects can be compared with the "
                    "paper; the sizes belong to the miniature.")
    return "Against the paper's claims:\n\n" + "\n".join(text)


# --- the two AP conventions ------------------------------------------------------------------------------

def ap_conventions(emb: Any, scale: float = 100.0) -> pd.DataFrame:
    """The embeddings' test tiles scored one-vs-rest (every class a binary task, as multi-label data) from
    ``scale * cos`` logits against the class text embeddings: the correct macro AP and the authors'
    convention on the same logits in fp32 and bf16, beside the class prevalence (the AP of chance), in %.

    ``emb`` is a :class:`mtmg.runs.stages.Embeddings`; ``scale`` is 100 as in OpenAI CLIP's head.
    """
    text = torch.nn.functional.normalize(emb.class_text.float(), dim=1)
    targets = emb.targets.float() if emb.multilabel else torch.nn.functional.one_hot(
        emb.targets.long(), text.shape[0]).float()
    rows = []
    for name, images in (("CLIP zero-shot on RGB", emb.rgb_zeroshot), ("CLIP patched on RGB", emb.rgb_patched),
                         ("student (aligned) on MS", emb.ms_student)):
        logits = scale * torch.nn.functional.normalize(images.float(), dim=1) @ text.T
        rows.append({"model": name, "macro AP (%)": 100 * macro_average_precision(logits, targets),
                     "authors' convention, fp32 (%)": 100 * authors_macro_average_precision(logits, targets, "float32"),
                     "authors' convention, bf16 (%)":
                         100 * authors_macro_average_precision(logits, targets, "bfloat16"),
                     "class prevalence (%)": 100 * float(targets.mean())})
    return pd.DataFrame(rows).set_index("model").round(2)


def summarize_ap_conventions(table: pd.DataFrame) -> str:
    """What :func:`ap_conventions` showed, with its numbers."""
    prevalence = table["class prevalence (%)"].iloc[0]
    fp32, bf16 = "authors' convention, fp32 (%)", "authors' convention, bf16 (%)"
    lines = [f"- {model}: correct macro AP **{r['macro AP (%)']:.1f} %**; the authors' convention gives "
             f"{r[fp32]:.1f} % on fp32 logits and {r[bf16]:.1f} % on bf16 logits." for model, r in table.iterrows()]
    return ("The same logits scored two ways (class prevalence, the AP of a random ranking: "
            f"{prevalence:.1f} %):\n\n" + "\n".join(lines) + "\n\nAt 100·cos the sigmoid that torchmetrics applies "
            "to scores outside [0, 1] rounds to exactly 1.0 for most tiles, which then tie; the tied block scores "
            "at the prevalence. Differences between models measured this way say little about the models.")


# --- linear probe ----------------------------------------------------------------------------------------

def _one_tile(part: pd.DataFrame) -> str:
    """For top-1 on a known number of test tiles: what one tile is worth, the resolution of the comparison."""
    if part["metric"].iloc[0] != "top1" or "n_test" not in part or part["n_test"].isna().all():
        return ""
    n = int(part["n_test"].max())
    return f" The test split holds {n} tiles: one tile more or less moves a score by {100 / n:.1f} points."


def _resolved(differences: pd.DataFrame | None, dataset: str) -> str:
    """Which differences between the student and its initial weights the test tiles resolve (95 % paired
    bootstrap interval excluding zero)."""
    if differences is None or differences.empty or dataset not in set(differences["dataset"]):
        return ""
    part = differences[differences["dataset"] == dataset]
    clear = [f"{r.shots} ({r.difference:+.1f} points, 95 % interval {r.low:+.1f} to {r.high:+.1f})"
             for r in part.itertuples() if r.clear]
    unclear = [str(r.shots) for r in part.itertuples() if not r.clear]
    return (" Differences the test tiles resolve (95 % paired-bootstrap interval excluding zero): "
            + (", ".join(clear) if clear else "none")
            + (f"; within noise: {', '.join(unclear)}." if unclear else "."))


def _probe_verdict(differences: pd.DataFrame | None, dataset: str, full: pd.Series) -> str:
    """The aligned student's probe (all training tiles) against its initial weights': above or below only when
    the paired interval excludes zero (:func:`difference_sentence`)."""
    rows = None if differences is None or differences.empty else differences[
        (differences["dataset"] == dataset) & (differences["shots"] == "all")]
    if rows is None or rows.empty:
        return (f"The aligned student's probe scores {pct(full['student'])} against {pct(full['student_init'])} for "
                "its initial weights; without an interval this is not called a gain.")
    r = rows.iloc[0]
    return (difference_sentence("The aligned student's probe", "its initial weights'",
                                Interval(float(r["difference"]), float(r["low"]), float(r["high"]), int(r["n_test"])))
            + f" The two probes score {pct(full['student'])} and {pct(full['student_init'])}.")


def summarize_probe(results: pd.DataFrame, differences: pd.DataFrame | None = None) -> str:
    """What the linear probe showed: per dataset, the four encoders with all training tiles and with one
    per class, and whether alignment moved the student's probe above its initial weights'; with
    ``differences`` (:func:`mtmg.evaluation.probe.difference_table`), whether the test tiles can tell the two apart."""
    text = []
    for dataset in dict.fromkeys(results["dataset"]):
        part = results[results["dataset"] == dataset]
        metric = METRIC_NAMES.get(part["metric"].iloc[0], part["metric"].iloc[0])
        full = part[part["shots"] == ALL].groupby("model")["value"].mean()
        one = part[part["shots"] == part["shots"][part["shots"] != ALL].min()].groupby("model")["value"].mean() \
            if (part["shots"] != ALL).any() else pd.Series(dtype=float)
        scores = "; ".join(f"{ENCODERS[m][1]} {pct(full[m])}" for m in ENCODERS if m in full)
        text.append(f"- {dataset_label(dataset)} (test {metric}, all training tiles): {scores}.")
        if "student" in full and "student_init" in full:
            text.append(f"  {_probe_verdict(differences, dataset, full)}"
                        + (f" With one tile per class: {pct(one['student'])} vs {pct(one['student_init'])}."
                           if "student" in one and "student_init" in one else "")
                        + _one_tile(part) + _resolved(differences, dataset))
    return "Linear probe in this run:\n\n" + "\n".join(text)


# --- intervals and baselines -----------------------------------------------------------------------------

INTERVAL_COLUMN = "95 % interval"


def _zeroshot_scores(images: Any, class_text: Any) -> np.ndarray:
    """Cosine scores (N, C) of image embeddings against the class text embeddings (the head's ranking)."""
    return (torch.nn.functional.normalize(torch.as_tensor(images).float(), dim=1)
            @ torch.nn.functional.normalize(torch.as_tensor(class_text).float(), dim=1).T).double().numpy()


def headline_intervals(emb: Any, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The headline numbers of chapters 2 and 3 on the embedded test tiles, each with its 95 % percentile-
    bootstrap interval over those tiles (:mod:`mtmg.evaluation.intervals`; paired for differences): zero-shot
    and patched CLIP on RGB and the patching gain, the student on MS, its difference to its teacher, and RGB↔MS
    recall@1 both ways. ``emb``: :class:`mtmg.runs.stages.Embeddings`. Values in % or points."""
    targets = np.asarray(emb.targets)
    ml = bool(emb.multilabel)
    metric = METRIC_NAMES["macro_ap" if ml else "top1"]
    scores = {name: _zeroshot_scores(getattr(emb, name), emb.class_text)
              for name in ("rgb_zeroshot", "rgb_patched", "ms_student")}
    opts = {"n_boot": n_boot, "seed": seed}
    rows = []

    def add(chapter: str, quantity: str, found: Any, unit: str = "%") -> None:
        i = found.scaled(100)
        rows.append({"chapter": chapter, "quantity": quantity, "value": round(i.value, 2), "low": round(i.low, 2),
                     "high": round(i.high, 2), "unit": unit, "test tiles": i.n})

    def one(name: str) -> Any:
        return intervals.score_interval([scores[name]], targets, ml, **opts)

    def diff(a: str, b: str) -> Any:
        return intervals.difference_interval([scores[a]], [scores[b]], targets, ml, **opts)

    add("2", f"CLIP zero-shot on RGB, {metric}", one("rgb_zeroshot"))
    add("2", f"CLIP patched (α = {emb.alpha:g}) on RGB, {metric}", one("rgb_patched"))
    add("2", "patched − zero-shot (paired)", diff("rgb_patched", "rgb_zeroshot"), "points")
    add("3", f"student (aligned) on MS, {metric}", one("ms_student"))
    add("3", "student on MS − patched CLIP on RGB (paired)", diff("ms_student", "rgb_patched"), "points")
    for direction, (q, g) in {"ms→rgb": (emb.ms_student, emb.rgb_patched),
                              "rgb→ms": (emb.rgb_patched, emb.ms_student)}.items():
        add("3", f"RGB↔MS recall@1, {direction}", intervals.hit_interval(intervals.retrieval_hits(q, g, 1), **opts))
    return pd.DataFrame(rows)


def _interval_text(value: float, low: float, high: float, signed: bool) -> tuple[str, str]:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f.format(value) + (" points" if signed else " %"), f"{f.format(low)} to {f.format(high)}"


def interval_table(intervals: pd.DataFrame, chapter: str | None = None) -> pd.DataFrame:
    """:func:`headline_intervals` (the rows of one ``chapter``, else all) as a table to print: value and
    its 95 % interval per quantity."""
    rows = intervals if chapter is None else intervals[intervals["chapter"] == chapter]
    texts = [_interval_text(v, lo, hi, u == "points")
             for v, lo, hi, u in zip(rows["value"], rows["low"], rows["high"], rows["unit"])]
    return pd.DataFrame({"value": [t[0] for t in texts], INTERVAL_COLUMN: [t[1] for t in texts],
                         "test tiles": rows["test tiles"].to_numpy()},
                        index=pd.Index(rows["quantity"], name="quantity"))


def alpha_over_seeds(alphas: Mapping[int, float]) -> str:
    """The selected α of each training seed of stage 1 and the range it took (Markdown)."""
    if not alphas:
        return "No stage 1 run to read the selected α from."
    listed = ", ".join(f"{a:g} (seed {s})" for s, a in sorted(alphas.items()))
    low, high = min(alphas.values()), max(alphas.values())
    spread = (f"the selected α ranges from {low:g} to {high:g} over these {len(alphas)} seeds" if low != high
              else f"the same α over these {len(alphas)} seeds")
    return (f"Selected α by training seed of stage 1: {listed}; {spread}. The validation split decides α, "
            "and a few tiles more or less there can move it.")


PROTOCOL_NAMES = {"mtmg": "mtmg probe", "clip_benchmark": "CLIP_benchmark protocol"}
DIFFERENCE_ROW = "student (aligned) − student before alignment (paired)"


def probe_protocols(results: pd.DataFrame, scores: Mapping[str, np.ndarray], *, n_boot: int = 1000) -> pd.DataFrame:
    """Per dataset and encoder, the probe with all training tiles under the project's protocol and under
    CLIP_benchmark's, each with its 95 % interval over the test tiles, and the band-statistics baseline
    (:mod:`mtmg.evaluation.baselines`); per dataset and protocol also the aligned student minus its initial
    weights (paired interval). ``scores``: the probe folder's test scores. Long form: dataset, encoder,
    protocol, value, low, high (% or points), n."""
    rows = []
    for dataset in dict.fromkeys(results["dataset"]):
        targets = scores[scores_name(dataset, "targets")]
        ml = targets.ndim == 2
        for protocol in PROTOCOL_NAMES:
            fits = {m: scores.get(scores_name(dataset, protocol_name(m, protocol), ALL, 0))
                    for m in (*ENCODERS, BAND_STATISTICS)}
            found = {LABELS.get(m) or ENCODERS[m][1]: intervals.score_interval([f], targets, ml, n_boot=n_boot)
                     for m, f in fits.items() if f is not None}
            if fits["student"] is not None and fits["student_init"] is not None:
                found[DIFFERENCE_ROW] = intervals.difference_interval([fits["student"]], [fits["student_init"]],
                                                                      targets, ml, n_boot=n_boot)
            rows += [{"dataset": dataset_label(dataset), "encoder": name, "protocol": protocol,
                      "value": 100 * i.value, "low": 100 * i.low, "high": 100 * i.high, "n": i.n}
                     for name, i in found.items()]
    return pd.DataFrame(rows, columns=["dataset", "encoder", "protocol", "value", "low", "high", "n"])


def protocols_table(long: pd.DataFrame) -> pd.DataFrame:
    """:func:`probe_protocols` to print: one row per dataset and encoder, one column per protocol (score or
    difference with its 95 % interval)."""
    cells = long.assign(cell=[" ".join((t[0], f"({t[1]})")) for t in (
        _interval_text(v, lo, hi, e == DIFFERENCE_ROW)
        for v, lo, hi, e in zip(long["value"], long["low"], long["high"], long["encoder"]))])
    table = cells.pivot_table(index=["dataset", "encoder"], columns="protocol", values="cell", aggfunc="first",
                              sort=False)
    return table[[p for p in PROTOCOL_NAMES if p in table.columns]].rename(columns=PROTOCOL_NAMES).fillna("—")


def summarize_protocols(long: pd.DataFrame) -> str:
    """What :func:`probe_protocols` shows, in plain words, whatever it shows: which encoders the band statistics
    baseline stays below or above, and whether each protocol tells the student from its initial weights."""
    text = []
    for (dataset, protocol), part in long.groupby(["dataset", "protocol"], sort=False):
        rows = part.set_index("encoder")
        if LABELS["bands"] not in rows.index:
            continue
        bands = rows.loc[LABELS["bands"]]
        encoders = rows.drop(index=[LABELS["bands"], DIFFERENCE_ROW], errors="ignore")
        above = [e for e, r in encoders.iterrows() if r["low"] > bands["high"]]
        below = [e for e, r in encoders.iterrows() if r["high"] < bands["low"]]
        level = [e for e in encoders.index if e not in above + below]
        parts = [f"the band statistics score {bands['value']:.1f} %"]
        parts += [f"clearly above them: {', '.join(above)}"] if above else []
        parts += [f"clearly below them: {', '.join(below)}"] if below else []
        parts += [f"not told apart from them: {', '.join(level)}"] if level else []
        if DIFFERENCE_ROW in rows.index:
            d = rows.loc[DIFFERENCE_ROW]
            parts.append(f"the aligned student is **{'ahead of' if d['value'] > 0 else 'behind'}** its initial "
                         f"weights by {abs(d['value']):.1f} points (interval {d['low']:+.1f} to {d['high']:+.1f})"
                         if d["low"] > 0 or d["high"] < 0 else
                         f"the aligned student and its initial weights cannot be told apart ({d['value']:+.1f} "
                         f"points, interval {d['low']:+.1f} to {d['high']:+.1f})")
        text.append(f"- {dataset}, {PROTOCOL_NAMES[protocol]}: " + "; ".join(parts) + ".")
    return ("All training tiles, two probe protocols and a baseline without any encoder (95 % intervals over the "
            "test tiles):\n\n" + "\n".join(text) + "\n\nAn encoder whose probe does not rise above the bands' "
            "means and spreads has not given a linear classifier more than those 26 numbers do. Where the two "
            "protocols disagree about the student and its initial weights, the verdict belongs to the protocol, "
            "not to the encoders.")

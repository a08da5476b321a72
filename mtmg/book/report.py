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

def banner(profile: str, model: str, weights: str, data: Sequence[str], device: str, student: str | None = None) -> str:
    """Markdown opening an executed chapter: what ran, on what, where; a warning under ``default``."""
    lines = [f"> **{BANNER_TITLE}: `{profile}`** (device `{device}`)", ">",
             f"> - CLIP model: `{model}`; weights: {weights}"]
    if student:
        lines.append(f"> - multispectral student: {student}")
    lines.append("> - data: " + "; ".join(data))
    lines += [">", "> " + (DEFAULT_PROFILE_NOTE if profile == "default" else PAPER_PROFILE_NOTE
                          if profile == "paper" else f"Custom profile `{profile}`.")]
    return "\n".join(lines) + "\n"


def settings_table(cfg: Any, keys: Sequence[str]) -> pd.DataFrame:
    """Selected settings of a frozen config by dotted key (``"train.lr"``), as a two-column table."""
    from mtmg.core.config import to_dict

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


def summarize_zeroshot(results: Mapping[str, Any]) -> str:
    """What chapter 1 observed: scores against chance, the gap to the supported task, failing classes."""
    lines = []
    for e in results["datasets"]:
        chance = "" if e["chance"] is None else f" (chance {pct(e['chance'])})"
        lines.append(f"- {dataset_label(e['dataset'], e['root'])}, {e['role']}: "
                     f"{METRIC_NAMES.get(e['metric'], e['metric'])} **{pct(e['value'])}**{chance} "
                     f"on {e['n_samples']} {e['split']} samples.")
    text = [f"Zero-shot `{results['model']}` in this run:", "", *lines, ""]
    rs = [e for e in results["datasets"] if e["role"] == "remote sensing"]
    sup = [e for e in results["datasets"] if e["role"] == "supported"]
    if rs and sup:
        gap = np.mean([e["value"] for e in sup]) - np.mean([e["value"] for e in rs])
        verdict = "lower" if gap > 0 else "higher"
        text.append(f"The mean remote-sensing score is {100 * abs(gap):.1f} points {verdict} than the mean "
                    "supported-task score.")
    single = [e for e in rs if not e["multilabel"]]
    if single:
        e = single[0]
        acc = np.array([np.nan if v is None else v for v in e["per_class"]])
        best = e["classes"][int(np.nanargmax(acc))]
        zero = [c for c, a in zip(e["classes"], acc) if a == 0]
        text.append(f"On {dataset_label(e['dataset'], e['root'])} the best class is {best} ({pct(np.nanmax(acc))}).")
        if zero:
            text.append(f"{len(zero)} of {len(acc)} classes are never recognised ({', '.join(zero)}).")
        else:
            worst = [e["classes"][i] for i in np.argsort(acc, kind="stable")[:3]]
            text.append(f"The weakest classes are {', '.join(worst)}.")
        confused = most_confused(e, 2)
        if confused:
            text.append("Most frequent confusions: " + "; ".join(f"{t} taken for {p} ({n}×)" for t, p, n in confused)
                        + ".")
    return "\n".join(text)


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


def summarize_patching(scores: pd.DataFrame, alpha: float, paper_alpha: float = 0.5,
                       log: pd.DataFrame | None = None) -> str:
    """What chapter 2 observed: the selected α, gains on the patching task, losses on the supported task."""
    tasks = list(dict.fromkeys(scores["task"]))
    table = before_after(scores, alpha, paper_alpha)
    patch_task, supported = dataset_label(tasks[0]), [dataset_label(t) for t in tasks[1:]]
    sel, zs, ft = f"selected (α={alpha:g})", "zero-shot (α=0)", "fine-tuned (α=1)"
    paper = f"authors' default (α={paper_alpha:g})"
    text = [f"The PAINT rule (best mean validation score over the tasks) selected **α = {alpha:g}**; "
            f"the authors' code uses α = {paper_alpha:g}.", "",
            f"- {patch_task} (patching task, test): {table.loc[patch_task, zs]:.1f} % zero-shot, "
            f"{table.loc[patch_task, sel]:.1f} % at α = {alpha:g}, {table.loc[patch_task, paper]:.1f} % at "
            f"α = {paper_alpha:g}, {table.loc[patch_task, ft]:.1f} % fully fine-tuned."]
    for task in supported:
        text.append(f"- {task} (supported task, test): {table.loc[task, zs]:.1f} % zero-shot, "
                    f"{table.loc[task, sel]:.1f} % at α = {alpha:g}, {table.loc[task, paper]:.1f} % at "
                    f"α = {paper_alpha:g}, {table.loc[task, ft]:.1f} % fully fine-tuned.")
    text.append("")
    gain = table.loc[patch_task, sel] - table.loc[patch_task, zs]
    if supported:
        forget_ft = np.mean([table.loc[t, ft] - table.loc[t, zs] for t in supported])
        forget_sel = np.mean([table.loc[t, sel] - table.loc[t, zs] for t in supported])
        text.append(f"Patching changed the patching task by {gain:+.1f} points at the selected α, while the "
                    f"supported task changed by {forget_sel:+.1f} points there and by {forget_ft:+.1f} points "
                    f"with full fine-tuning.")
    if log is not None and len(log) > 1:
        n = max(1, len(log) // 10)
        text.append(f"The fine-tuning loss went from {log['loss'].iloc[:n].mean():.3f} (first tenth of "
                    f"{len(log)} steps) to {log['loss'].iloc[-n:].mean():.3f} (last tenth).")
    return "\n".join(text)


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
    from mtmg.evaluation.metrics import recall_at_k

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


def summarize_alignment(results: pd.DataFrame, log: pd.DataFrame | None = None, split: str = "test",
                        n_items: Mapping[str, int] | None = None) -> str:
    """What chapter 3 observed: student on MS against the teachers on RGB, retrieval against chance.

    ``n_items`` (dataset -> size of the evaluated split) adds the chance level of recall@1.
    """
    rows = results[results["split"] == split]
    text = []
    for dataset in dict.fromkeys(rows["dataset"]):
        part = rows[rows["dataset"] == dataset]
        columns = part[["model", "modality", "metric", "value"]]
        score = {(m, mod): v for m, mod, met, v in columns.itertuples(index=False) if met in ("top1", "macro_ap")}
        metric = METRIC_NAMES.get(part[part["metric"].isin(("top1", "macro_ap"))]["metric"].iloc[0], "score")
        student, teacher = score.get(("student", "ms")), score.get(("clip_patched", "rgb"))
        zeroshot, init = score.get(("clip_zeroshot", "rgb")), score.get(("student_init", "ms"))
        label = dataset_label(dataset)
        if student is not None and teacher is not None:
            rel = "above" if student > teacher else "below" if student < teacher else "level with"
            text.append(f"- {label} ({split}, {metric}): the student on 13 bands scores **{pct(student)}**, "
                        f"{rel} its teacher on RGB ({pct(teacher)}); zero-shot CLIP on RGB {pct(zeroshot)}, "
                        f"the untrained student {pct(init)}.")
        rec = part[(part["model"] == "student") & (part["metric"] == "recall@1")]
        rec_init = part[(part["model"] == "student_init") & (part["metric"] == "recall@1")]
        n = (n_items or {}).get(dataset)
        for _, r in rec.iterrows():
            base = rec_init[rec_init["modality"] == r["modality"]]["value"]
            chance = f", chance {pct(1 / n, 2)}" if n else ""
            ratio = f" ({r['value'] * n:.0f}× chance)" if n and r["value"] > 0 else ""
            text.append(f"- {label} retrieval {r['modality']}: recall@1 **{pct(r['value'])}**{ratio}; "
                        f"untrained student {pct(base.iloc[0]) if len(base) else 'n/a'}{chance}.")
    if log is not None and len(log) > 1 and "feature_loss" in log:
        n = max(1, len(log) // 10)
        text.append(f"- Training: the feature (MSE) loss fell from {log['feature_loss'].iloc[:n].mean():.4f} to "
                    f"{log['feature_loss'].iloc[-n:].mean():.4f}, the classification loss from "
                    f"{log['cls_loss'].iloc[:n].mean():.3f} to {log['cls_loss'].iloc[-n:].mean():.3f} "
                    f"over {len(log)} steps.")
    return "Alignment in this run:\n\n" + "\n".join(text)


# --- chapter 4: the modality gap -------------------------------------------------------------------------

def gap_table(text: Any, rgb_zeroshot: Any, rgb_patched: Any, ms_student: Any) -> pd.DataFrame:
    """:func:`mtmg.evaluation.gap.gap_summary` of zero-shot CLIP, patched CLIP and the student (with its teacher's RGB)."""
    from mtmg.evaluation.gap import gap_summary

    models = {"CLIP zero-shot": {"text": text, "rgb": rgb_zeroshot},
              "CLIP patched": {"text": text, "rgb": rgb_patched},
              "student (MS) + teacher (RGB)": {"text": text, "rgb": rgb_patched, "ms": ms_student}}
    return gap_summary(models).round(4)


def cross_model_gaps(rgb_zeroshot: Any, rgb_patched: Any, ms_student: Any) -> pd.DataFrame:
    """Centroid gaps and mean paired cosine between the image sets of different models (same tiles)."""
    from mtmg.evaluation.gap import modality_gap

    pairs = {"RGB zero-shot ↔ RGB patched": (rgb_zeroshot, rgb_patched),
             "RGB zero-shot ↔ MS student": (rgb_zeroshot, ms_student),
             "RGB patched ↔ MS student": (rgb_patched, ms_student)}
    rows = []
    for name, (a, b) in pairs.items():
        g = modality_gap(a, b, paired=True)
        rows.append({"pair": name, "centroid gap": g.magnitude, "mean paired cosine": g.mean_paired_cosine,
                     "mean paired distance": g.mean_paired_distance})
    return pd.DataFrame(rows).set_index("pair").round(4)


def summarize_gap(gaps: pd.DataFrame, cosine: pd.Series, cross: pd.DataFrame) -> str:
    """What chapter 4 observed: the text↔image gaps per model, where the student sits, how far patching
    moved the images (``gaps`` from :func:`gap_table`, ``cosine`` from ``mtmg.evaluation.gap.summarize``, ``cross``
    from :func:`cross_model_gaps`)."""
    zs, pt, st = gaps.index[0], gaps.index[1], gaps.index[2]
    g = gaps.loc
    to_patched = cross.loc["RGB patched ↔ MS student", "centroid gap"]
    to_zeroshot = cross.loc["RGB zero-shot ↔ MS student", "centroid gap"]
    text = [
        f"- Text↔RGB centroid gap: {g[zs, 'gap_text_rgb']:.3f} for zero-shot CLIP, {g[pt, 'gap_text_rgb']:.3f} "
        f"after patching ({'wider' if g[pt, 'gap_text_rgb'] > g[zs, 'gap_text_rgb'] else 'narrower'}).",
        f"- Text↔MS gap of the student: {g[st, 'gap_text_ms']:.3f}; RGB↔MS gap to its teacher: "
        f"{g[st, 'gap_rgb_ms']:.3f} ({'smaller' if g[st, 'gap_rgb_ms'] < g[st, 'gap_text_rgb'] else 'not smaller'} "
        f"than the text↔image gap); mean cosine between the two views of a tile {g[st, 'cos_rgb_ms']:.3f}.",
        f"- Cone effect (mean pairwise cosine within a set): text {g[zs, 'cone_text']:.3f}, RGB "
        f"{g[zs, 'cone_rgb']:.3f} (zero-shot) and {g[pt, 'cone_rgb']:.3f} (patched), MS {g[st, 'cone_ms']:.3f}.",
        f"- The same image under zero-shot and patched CLIP: median cosine {cosine['q50']:.3f} (5–95 %: "
        f"{cosine['q05']:.3f}–{cosine['q95']:.3f}).",
        f"- The MS student is {'closer to' if to_patched < to_zeroshot else 'not closer to'} the patched tower "
        f"(centroid gap {to_patched:.3f}) than to the zero-shot one ({to_zeroshot:.3f}).",
    ]
    return "Modality gap in this run:\n\n" + "\n".join(text)


def shift_experiment(images: Any, class_text: Any, labels: Any, steps: int = 9) -> pd.DataFrame:
    """:func:`mtmg.evaluation.gap.shift_experiment` of images against the class text embeddings, with λ spanning
    the image↔text gap on both sides (``steps`` values from −gap to +gap)."""
    from mtmg.evaluation.gap import gap_magnitude
    from mtmg.evaluation.gap import shift_experiment as shift

    lambdas = np.linspace(-1.0, 1.0, steps) * gap_magnitude(images, class_text)
    return shift(images, class_text, lambdas, labels=labels, names=("image", "text"))


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


def summarize_benchmarks(profile: str, gains: pd.DataFrame, align_results: pd.DataFrame) -> str:
    """What chapter 5 observed, and how it relates to the paper's claims (directions only under ``default``)."""
    text = []
    rs = gains[gains["role"] == "remote sensing"]
    sup = gains[gains["role"] == "supported"]
    for _, r in rs.iterrows():
        paper = r["paper's gain (points)"]
        ref = "" if np.isnan(paper) else f" (paper: {paper:+.2f} points at paper scale)"
        text.append(f"- Patching changed {r['dataset']} zero-shot {r['metric']} by {r['gain (points)']:+.1f} "
                    f"points{ref}.")
    for _, r in sup.iterrows():
        text.append(f"- The supported task ({r['dataset']}) changed by {r['gain (points)']:+.1f} points "
                    f"(the paper's abstract reports ImageNet performance maintained).")
    test = align_results[(align_results["split"] == "test") & align_results["metric"].isin(("top1", "macro_ap"))]
    for dataset in dict.fromkeys(test["dataset"]):
        part = test[test["dataset"] == dataset].set_index(["model", "modality"])["value"]
        if ("student", "ms") in part and ("clip_patched", "rgb") in part:
            s, t = part[("student", "ms")], part[("clip_patched", "rgb")]
            verdict = "beats" if s > t else "does not beat"
            text.append(f"- On {dataset_label(dataset)} the aligned MS student {verdict} patched CLIP on RGB "
                        f"({pct(s)} vs {pct(t)}); the paper's abstract reports significant gains from cross-modal "
                        f"alignment.")
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
    import torch

    from mtmg.evaluation.metrics import authors_macro_average_precision, macro_average_precision

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


def summarize_probe(results: pd.DataFrame, differences: pd.DataFrame | None = None) -> str:
    """What the linear probe showed: per dataset, the four encoders with all training tiles and with one
    per class, and whether alignment moved the student's probe above its initial weights'; with
    ``differences`` (:func:`mtmg.evaluation.probe.difference_table`), whether the test tiles can tell the two apart."""
    from mtmg.evaluation.probe import ALL, ENCODERS

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
            verdict = "above" if full["student"] > full["student_init"] else "not above"
            text.append(f"  The aligned student's probe is **{verdict}** its initial weights' "
                        f"({pct(full['student'])} vs {pct(full['student_init'])})"
                        + (f"; with one tile per class {pct(one['student'])} vs {pct(one['student_init'])}."
                           if "student" in one and "student_init" in one else ".")
                        + _one_tile(part) + _resolved(differences, dataset))
    return "Linear probe in this run:\n\n" + "\n".join(text)

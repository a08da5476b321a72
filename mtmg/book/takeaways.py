"""Each chapter's takeaways, written from the run's numbers and tied to the chapter's goals.

One rule holds everywhere: a difference is called a gain (or a loss) only when its 95 % bootstrap
interval over the test tiles (:mod:`mtmg.evaluation.intervals`) excludes zero; otherwise the sentence says
that these test tiles cannot tell the two apart. A score is called above chance only when its interval
lies above the chance level. The functions return Markdown (a list, one item per goal).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtmg.book.report import (
    GAP_REFERENCES,
    METRIC_NAMES,
    dataset_label,
    difference_sentence,
    head_hits,
    most_confused,
    student_teacher_interval,
)
from mtmg.evaluation import gap, intervals
from mtmg.evaluation.intervals import Interval
from mtmg.evaluation.metrics import PRIMARY_METRIC

RGB_BANDS = ("B02", "B03", "B04")


# --- the rule ---------------------------------------------------------------------------------------------

def chance_sentence(subject: str, interval: Interval, chance: float) -> str:
    """A score (``interval`` in %) against the chance level (%)."""
    score = f"{interval.value:.1f} % (95 % interval {interval.low:.1f} to {interval.high:.1f})"
    if interval.low > chance:
        return f"{subject} scores {score}, **above** chance ({chance:.0f} %)."
    if interval.high < chance:
        return f"{subject} scores {score}, **below** chance ({chance:.0f} %)."
    return f"{subject} scores {score}: these test tiles cannot tell it from chance ({chance:.0f} %)."


def _percent(interval: Interval) -> Interval:
    return interval.scaled(100)


def _goal(number: int, name: str, sentences: Sequence[str]) -> str:
    return f"- **Goal {number}, {name}.** " + " ".join(s for s in sentences if s)


# --- reading a training curve -----------------------------------------------------------------------------

def curve_sentences(log: pd.DataFrame, column: str = "loss", name: str = "the loss") -> list[str]:
    """What a training curve shows beyond its end points: where most of the decrease happened, whether it
    was still falling at the end, and how much the batches scatter around the trend."""
    values = log[column].to_numpy(dtype=float)
    n = len(values)
    if n < 8:
        return [f"{name.capitalize()} was logged at {n} steps only: too few to read a curve."]
    smooth = pd.Series(values).rolling(max(1, n // 25), min_periods=1).mean().to_numpy()
    tenth = max(1, n // 10)
    start, end = values[:tenth].mean(), values[-tenth:].mean()
    out = [f"{name.capitalize()} went from {start:.3g} (mean of the first tenth of {n} steps) to {end:.3g} "
           f"(last tenth), a factor of {start / end:.1f}." if end > 0 else ""]
    if start > end:
        reached = int(np.argmax(smooth <= start - 0.9 * (start - end)))
        out.append(f"Nine tenths of that decrease were reached by step {reached + 1} ({100 * (reached + 1) / n:.0f} % "
                   "of training): the curve is steep first and flat later.")
    quarter = smooth[-max(2, n // 4):]
    change = (quarter[-1] - quarter[0]) / abs(quarter[0]) if quarter[0] else 0.0
    out.append(f"Over the last quarter the smoothed curve changed by {100 * change:+.0f} %: "
               + ("still falling, so more steps would lower it further." if change < -0.05 else
                  "rising again, a sign of a learning rate too high for the end of training." if change > 0.05 else
                  "flat, so training ran long enough for this schedule."))
    scatter = np.std(values[-n // 4:] - smooth[-n // 4:]) / max(abs(end), 1e-12)
    out.append(f"Single batches scatter by about ±{100 * scatter:.0f} % around the trend (the faint line): "
               "read the solid moving average, not single steps.")
    return out


# --- chapter 1 --------------------------------------------------------------------------------------------

def _hits_from_confusion(cm: Any) -> np.ndarray:
    """Per-tile top-1 hits recovered from a confusion matrix (the order of the tiles does not matter)."""
    cm = np.asarray(cm)
    correct, total = int(np.trace(cm)), int(cm.sum())
    return np.r_[np.ones(correct), np.zeros(total - correct)]


def chapter1(results: Mapping[str, Any], spectra: pd.DataFrame) -> str:
    """Takeaways of chapter 1: the band that separates the classes most, zero-shot scores against chance and
    against the supported task (with intervals), and the classes that fail."""
    spread = spectra.std(axis=0)
    band = str(spread.idxmax())
    rgb_best = str(spread[list(RGB_BANDS)].idxmax())
    goals = [_goal(1, "three views of a tile", [
        "The false-colour view and NDVI show what the RGB composite cannot: vegetation, which reflects the near "
        "infrared, stands out from bare soil, water and built-up surfaces."]),
        _goal(2, "what the RGB composite leaves out", [
            f"Across this run's test tiles the class means differ most in band {band} (standard deviation "
            f"{spread[band]:.3f} of reflectance between classes), against {spread[rgb_best]:.3f} in {rgb_best}, the "
            "most discriminative RGB band" + (": the best band is one CLIP never reads." if band not in RGB_BANDS
                                              else ".")])]
    scored: dict[str, Interval] = {}
    sentences = []
    for e in results["datasets"]:
        label = f"{dataset_label(e['dataset'], e['root'])} ({e['role']})"
        if e.get("confusion_matrix") is not None and not e["multilabel"]:
            found = _percent(intervals.hit_interval(_hits_from_confusion(e["confusion_matrix"])))
            scored[e["role"]] = scored.get(e["role"], found)
            sentences.append(chance_sentence(f"Zero-shot CLIP on {label}", found, 100 * e["chance"]))
        else:
            sentences.append(f"Zero-shot CLIP on {label}: {METRIC_NAMES.get(e['metric'], e['metric'])} "
                             f"{100 * e['value']:.1f} % (no interval: a multi-label score).")
    if "remote sensing" in scored and "supported" in scored:
        rs, sup = scored["remote sensing"], scored["supported"]
        apart = rs.high < sup.low or sup.high < rs.low
        sentences.append("The two intervals do not overlap: the remote-sensing score is lower than the supported "
                         "task's, the distribution shift this chapter is about." if apart and rs.value < sup.value
                         else "The two intervals overlap, so these test tiles alone do not establish a shift "
                              "between the two datasets." if not apart else
                         "The remote-sensing score is the higher one here: this run shows no shift.")
    goals.append(_goal(3, "zero-shot on Sentinel-2 against the supported task", sentences))
    single = [e for e in results["datasets"] if e["role"] == "remote sensing" and not e["multilabel"]]
    if single:
        e = single[0]
        acc = np.array([np.nan if v is None else v for v in e["per_class"]])
        never = [c for c, a in zip(e["classes"], acc) if a == 0]
        confused = most_confused(e, 1)
        goals.append(_goal(4, "which classes fail", [
            f"{len(never)} of {len(acc)} classes are never recognised" + (f" ({', '.join(never)})" if never else "")
            + f"; the best is {e['classes'][int(np.nanargmax(acc))]} ({100 * np.nanmax(acc):.0f} %).",
            (f"The most frequent confusion is {confused[0][0]} taken for {confused[0][1]} ({confused[0][2]} tiles of "
             f"{int(np.asarray(e['confusion_matrix'])[e['classes'].index(confused[0][0])].sum())})."
             if confused else "")]))
    return "\n".join(goals)


# --- chapter 2 --------------------------------------------------------------------------------------------

def headline_interval(headline: pd.DataFrame, quantity: str) -> Interval:
    """The row of :func:`mtmg.book.report.headline_intervals` whose quantity starts with ``quantity``."""
    rows = headline[headline["quantity"].str.startswith(quantity)]
    if rows.empty:
        raise KeyError(f"no headline interval {quantity!r}; quantities: {list(headline['quantity'])}")
    r = rows.iloc[0]
    return Interval(float(r["value"]), float(r["low"]), float(r["high"]), int(r["test tiles"]))


def chapter2(scores: pd.DataFrame, alpha: float, log: pd.DataFrame | None, gain: Interval | None = None) -> str:
    """Takeaways of chapter 2: the training curve, the sweep, the α rule and the trade-off. ``gain`` (the
    patching task's test score at the selected α minus α = 0, in points, with its paired interval) decides
    whether the change is called a gain; without an interval a change is reported and not called one."""
    goals = []
    if log is not None and "loss" in log:
        goals.append(_goal(1, "reading the fine-tuning curve", curve_sentences(log, "loss", "the fine-tuning loss")))
    test = scores[(scores["split"] == "test") & scores["metric"].isin(PRIMARY_METRIC.values())]
    val = scores[(scores["split"] == "val") & scores["metric"].isin(PRIMARY_METRIC.values())]
    tasks = list(dict.fromkeys(scores["task"]))
    alphas = sorted(set(val["alpha"]))
    goals.append(_goal(2, "the interpolation sweep", [
        f"Every task was scored at {len(alphas)} values of α from {min(alphas):g} to {max(alphas):g} on validation "
        f"and test splits, {len(tasks)} tasks in all; α = 0 is the zero-shot model and α = 1 the fine-tuned one."]))
    sentences = [f"The rule chose α = {alpha:g} on the validation splits alone."]
    if not test.empty:
        test_mean = test.pivot_table(index="alpha", columns="task", values="value", aggfunc="first").mean(axis=1)
        peak = float(test_mean.idxmax())
        steps = abs(alphas.index(peak) - alphas.index(alpha)) if peak in alphas and alpha in alphas else None
        sentences.append(f"The mean test score peaks at α = {peak:g}" + (
            ", the same value." if steps == 0 else f", {steps} grid step{'s' if steps != 1 else ''} away: choosing "
            "there would fit α to the tiles that report it." if steps is not None else "."))
    goals.append(_goal(3, "PAINT's rule for α", sentences))
    trade = []
    for task in tasks:
        part = test[test["task"] == task].set_index("alpha")["value"]
        if 0.0 not in part.index or alpha not in part.index:
            continue
        label = dataset_label(task)
        change = 100 * (part[alpha] - part[0.0])
        if gain is not None and task == tasks[0]:
            trade.append(difference_sentence(f"{label} at α = {alpha:g}", "its zero-shot score", gain)
                         + f" The interval is paired, on the {gain.n} test tiles chapter 3 embeds.")
        else:
            trade.append(f"{label[:1].upper() + label[1:]} changed by {change:+.1f} points at α = {alpha:g}"
                         + (f" and {100 * (part[1.0] - part[0.0]):+.1f} at α = 1" if 1.0 in part.index else "")
                         + " (no paired interval was computed for it, so this page calls it neither a gain nor "
                           "a loss).")
    goals.append(_goal(4, "the trade-off between gaining and forgetting", trade))
    return "\n".join(goals)


# --- chapter 3 --------------------------------------------------------------------------------------------

def chapter3(emb: Any, log: pd.DataFrame | None) -> str:
    """Takeaways of chapter 3 from the test embeddings: the distillation curve, the student against its
    teacher (paired interval) and against chance, RGB↔MS retrieval against chance, and whether the student's
    lead over its teacher is more than noise."""
    goals = []
    if log is not None and "feature_loss" in log:
        goals.append(_goal(1, "distillation from a frozen teacher",
                           curve_sentences(log, "feature_loss", "the feature loss")))
    n = len(emb.ids)
    sentences = []
    lead = None
    if not emb.multilabel:
        targets = np.asarray(emb.targets)
        student = head_hits(emb.ms_student, emb.class_text, targets)
        chance = 100 / len(emb.classnames)
        sentences.append(chance_sentence(f"On the {n} {dataset_label(emb.dataset)} {emb.split} tiles the student "
                                         "(MS, CLIP's text head)", _percent(intervals.hit_interval(student)), chance))
        lead = student_teacher_interval(emb)
        sentences.append(difference_sentence("The student on MS", "its teacher on RGB", lead))
    goals.append(_goal(2, "zero-shot classification with CLIP's head", sentences))
    recall = _percent(intervals.hit_interval(intervals.retrieval_hits(emb.ms_student, emb.rgb_patched, 1)))
    goals.append(_goal(3, "RGB↔MS retrieval", [
        chance_sentence("Recall@1 from an MS query to the RGB gallery", recall, 100 / n).replace(
            "scores", "is", 1)]))
    if lead is not None:
        goals.append(_goal(4, "why the student can beat its teacher", [
            "In this run the student's lead over its teacher is more than noise: the ten extra bands and the label "
            "term are the candidates; the exercise *Without the classification term* removes the second."
            if lead.clear and lead.value > 0 else
            "In this run there is no lead to explain: the test tiles do not show the student above its teacher. "
            "Other seeds (chapter 5's exercise *Another seed for the student*) can show whether one appears."]))
    return "\n".join(goals)


# --- chapter 4 --------------------------------------------------------------------------------------------

def chapter4(emb: Any, gaps: pd.DataFrame, cross: pd.DataFrame | None = None,
             coords: pd.DataFrame | None = None) -> str:
    """Takeaways of chapter 4: what the maps can show, the measured gaps and cones (``gaps`` from
    :func:`mtmg.book.report.gap_table`, ``cross`` from :func:`mtmg.book.report.cross_model_gaps`), the sets along
    the gap direction (``coords`` from :func:`mtmg.book.figures.gap_coordinates`) and whether closing the gap
    changes zero-shot accuracy (paired interval), beside Liang et al.'s result on EuroSAT."""
    zs, pt, st = gaps.index[0], gaps.index[1], gaps.index[2]
    g = gaps.loc
    goals = [_goal(1, "the joint map", [
        "UMAP keeps neighbourhoods and PCA the directions of largest variance; neither keeps the distance between "
        "the sets, so how far apart the clouds look in the maps is no measure of the gap; the distances below are."])]
    sentences = [f"The text↔RGB centroid gap is {g[zs, 'gap_text_rgb']:.2f} for zero-shot CLIP and "
                 f"{g[pt, 'gap_text_rgb']:.2f} after patching (0: same centroid, 2: opposite directions)."]
    if pd.notna(g[st, "gap_rgb_ms"]):
        sentences.append(f"The student's MS embeddings sit {g[st, 'gap_rgb_ms']:.2f} from their teacher's RGB "
                         f"embeddings and {g[st, 'gap_text_ms']:.2f} from the text: the student inherited its "
                         "teacher's place, gap to the text included.")
    if cross is not None:
        to_patched = cross.loc["RGB patched ↔ MS student", "centroid gap"]
        to_zeroshot = cross.loc["RGB zero-shot ↔ MS student", "centroid gap"]
        sentences.append(f"It is {'closer to' if to_patched < to_zeroshot else 'not closer to'} the patched tower "
                         f"({to_patched:.2f}) than to the zero-shot one ({to_zeroshot:.2f}).")
    sentences.append(f"Each set fills a narrow cone: the mean cosine between two items is {g[pt, 'cone_rgb']:.2f} "
                     f"within the patched RGB set and {g[zs, 'cone_text']:.2f} within the text prompts.")
    goals.append(_goal(2, "gaps and cones", sentences))
    if coords is not None:
        sets = list(dict.fromkeys(coords["set"]))
        text = coords.loc[coords["set"] == sets[0], "coordinate"]
        images = coords.loc[coords["set"] != sets[0], "coordinate"]
        medians = "; ".join(f"{s} {coords.loc[coords['set'] == s, 'coordinate'].median():.2f}" for s in sets)
        goals.append(_goal(3, "the gap along its direction", [
            f"Median positions along the gap direction (0: centroid of the {sets[0]}, 1: of the patched RGB "
            f"embeddings): {medians}.",
            (f"No {sets[0]} embedding reaches the lowest image embedding ({text.max():.2f} against "
             f"{images.min():.2f}): on this one axis text and images do not overlap at all, although the 2-D maps "
             "may show them side by side." if text.max() < images.min() else
             f"The {sets[0]} reach up to {text.max():.2f} and the image embeddings start at {images.min():.2f}: "
             f"the two overlap at their edges, while their medians lie {images.median() - text.median():.2f} "
             "apart.")]))
    if not emb.multilabel:
        targets = np.asarray(emb.labels)
        images, text = gap.l2_normalize(emb.rgb_patched), gap.l2_normalize(emb.class_text)
        before = intervals.top1_hits(images @ text.T, targets)
        shifted, moved = gap.shift_along_gap(images, text, gap.gap_magnitude(images, text))
        after = intervals.top1_hits(shifted @ moved.T, targets)
        found = _percent(intervals.hit_difference_interval(after, before))
        ref = {r.quantity: r.value for r in GAP_REFERENCES if r.dataset == "EuroSAT"}
        theirs = ref["zero-shot top-1, gap shifted"] - ref["zero-shot top-1, original gap"]
        goals.append(_goal(4, "closing the gap", [
            f"Shifting the RGB and text embeddings towards each other by the whole gap moves zero-shot accuracy "
            f"from {100 * before.mean():.1f} % to {100 * after.mean():.1f} %.",
            difference_sentence("Accuracy with the gap closed", "the original", found),
            f"Liang et al. report {theirs:+.2f} points on EuroSAT for CLIP ViT-B-32 "
            f"({ref['zero-shot top-1, original gap']:.2f} → {ref['zero-shot top-1, gap shifted']:.2f} %): a change "
            + ("inside" if found.low <= theirs <= found.high else "outside")
            + " this run's interval, so the two results "
            + ("are consistent at this run's precision." if found.low <= theirs <= found.high
               else "differ beyond the noise of these test tiles.")]))
    return "\n".join(goals)

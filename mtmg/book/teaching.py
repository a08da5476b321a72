"""The book's teaching frame, computed from runs: chapter run times and exercises with measured solutions.

Every exercise is one change to a profile, written as the ``overrides`` a learner passes to a chapter
notebook (dotted config keys, see :func:`mtmg.runs.profiles.load_profile`). :func:`run_exercise` runs that
change (the run store gives every parameter set its own folders and reuses the stages the change does
not touch, so a change to stage 2 re-runs stage 2 only and never overwrites the book's run) and
measures the quantities the exercise asks about; :func:`solution` sets them beside the book's run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mtmg.runs import pipeline, profiles
from mtmg.book import report
from mtmg.runs.profiles import Profile

#: The stages each chapter runs, in the order the pipeline records them.
CHAPTER_STAGES = {1: ("zeroshot",), 2: ("patch",), 3: ("align", "embeddings"), 4: (), 5: ("zeroshot_patched",)}


@dataclass(frozen=True)
class Exercise:
    """One change a learner makes through a chapter's ``overrides`` parameter.

    ``measure`` names what is compared (a key of :data:`MEASURES`); ``task`` is the question (Markdown);
    ``explanation`` is the reasoning a solution gives beside the measured numbers.
    """

    label: str
    chapter: int
    title: str
    overrides: Mapping[str, Any]
    measure: str
    task: str
    explanation: str

    def overrides_text(self) -> str:
        """The ``overrides`` assignment a learner types into the parameters cell."""
        return "overrides = " + json.dumps(dict(self.overrides)).replace("null", "None")


# --- measurements ----------------------------------------------------------------------------------------

def measure_zeroshot(prof: Profile) -> dict[str, float]:
    """Zero-shot score (%) of every dataset of the zero-shot stage."""
    table = report.zeroshot_table(pipeline.ensure_zeroshot(prof))
    return {f"{row['dataset']}, {row['metric']} (%)": float(row["score (%)"])
            for _, row in table.iterrows()}


def measure_patch(prof: Profile) -> dict[str, float]:
    """Selected α and the test scores (%) at α = 0, the selected α and α = 1 of every patching task."""
    patch = pipeline.ensure_patch(prof)
    table = report.before_after(patch.scores, patch.alpha, patch.paper_alpha)
    out = {"selected α": float(patch.alpha)}
    for task, row in table.iterrows():
        out[f"{task}: zero-shot (%)"] = float(row["zero-shot (α=0)"])
        out[f"{task}: at the selected α (%)"] = float(row[f"selected (α={patch.alpha:g})"])
        out[f"{task}: fine-tuned, α = 1 (%)"] = float(row["fine-tuned (α=1)"])
    return out


def measure_align(prof: Profile) -> dict[str, float]:
    """Zero-shot top-1 (%) of the student on MS and its teacher on RGB, and RGB↔MS recall@1 (%)."""
    results = pipeline.ensure_align(prof).results
    scores = report.alignment_scores(results)
    out = {}
    for model in ("student (aligned) on MS", "CLIP patched (teacher) on RGB"):
        if model in scores.index:
            for dataset, value in scores.loc[model].items():
                out[f"{model}, {dataset} (%)"] = float(value)
    recall = report.retrieval_table(results)
    if "R@1" in recall:
        for (dataset, direction), value in recall["R@1"].items():
            out[f"recall@1 {direction}, {dataset} (%)"] = float(value)
    return out


def measure_gap(prof: Profile) -> dict[str, float]:
    """Centroid gaps and the mean cosine between the two views of a tile, student with its teacher."""
    emb = pipeline.ensure_embeddings(prof)
    gaps = report.gap_table(emb.text, emb.rgb_zeroshot, emb.rgb_patched, emb.ms_student)
    row = gaps.iloc[-1]
    names = {"gap_text_rgb": "gap text ↔ RGB (teacher)", "gap_text_ms": "gap text ↔ MS (student)",
             "gap_rgb_ms": "gap RGB ↔ MS", "cos_rgb_ms": "mean cosine of a tile's RGB and MS embeddings"}
    out = {label: float(row[col]) for col, label in names.items() if col in row and pd.notna(row[col])}
    out["tiles embedded"] = float(len(emb.ids))
    return out


def measure_benchmark(prof: Profile) -> dict[str, float]:
    """The headline numbers of chapter 5: the patching summary followed by the alignment summary."""
    return {**measure_patch(prof), **measure_align(prof)}


MEASURES: dict[str, Callable[[Profile], dict[str, float]]] = {
    "zeroshot": measure_zeroshot, "patch": measure_patch, "align": measure_align, "gap": measure_gap,
    "benchmark": measure_benchmark}


# --- exercise runs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExerciseResult:
    """The measured quantities of the book's run and of the changed run, with the changed run's time."""

    exercise: Exercise
    book: dict[str, float]
    changed: dict[str, float]
    seconds: float


def run_exercise(prof: Profile, exercise: Exercise) -> ExerciseResult:
    """Run ``exercise`` on top of the book's profile ``prof`` (or reuse its finished run) and measure both."""
    measure = MEASURES[exercise.measure]
    book = measure(prof)
    changed_prof = profiles.load_profile(prof.name, device=prof.device, overrides=dict(exercise.overrides))
    changed = measure(changed_prof)
    return ExerciseResult(exercise, book, changed, new_seconds(pipeline.run_times(prof),
                                                               pipeline.run_times(changed_prof)))


def new_seconds(book_times: pd.DataFrame, changed_times: pd.DataFrame) -> float:
    """Seconds of the stages a change ran itself: those whose folder the book's run does not share."""
    own = changed_times[~changed_times["folder"].isin(set(book_times["folder"]))]
    return float(pd.to_numeric(own["seconds"], errors="coerce").fillna(0).sum())


# --- text ------------------------------------------------------------------------------------------------

def _number(name: str, value: float) -> str:
    if name == "selected α":
        return f"{value:g}"
    if name == "tiles embedded":
        return f"{value:.0f}"
    return f"{value:.1f}" if name.endswith("(%)") else f"{value:.3f}"


def comparison_table(result: ExerciseResult) -> pd.DataFrame:
    """Quantity, book's run, changed run and the difference, for every quantity measured in both."""
    rows = []
    for name, before in result.book.items():
        if name not in result.changed:
            continue
        after = result.changed[name]
        rows.append({"quantity": name, "book's run": _number(name, before), "with the change": _number(name, after),
                     "change": "±0" if abs(after - before) < 1e-9 else _number(name, after - before).join(
                         ("+" if after > before else "", ""))})
    return pd.DataFrame(rows, columns=["quantity", "book's run", "with the change", "change"])


def _markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def solution(result: ExerciseResult) -> str:
    """Markdown of a solution: the measured comparison, the run's time and the explanation."""
    ex = result.exercise
    ran = (f"the change ran in {result.seconds:.0f} s when this book was built"
           if result.seconds >= 1 else "the change reused finished runs when this book was built")
    text = [f"Measured with `{ex.overrides_text()}` ({ran}):", "", _markdown_table(comparison_table(result)), "",
            ex.explanation]
    return "\n".join(text)


def chapter_exercises(chapter: int) -> list[Exercise]:
    """The exercises of one chapter, in order."""
    return [ex for ex in EXERCISES if ex.chapter == chapter]


#: MIME prefix under which myst-nb finds a glued value that the notebook does not display.
GLUE_PREFIX = "application/papermill.record/"


def glue_markdown(glued: Mapping[str, str]) -> None:
    """Store each Markdown text under its key for the book's ``{glue:md}`` roles and directives.

    The outputs are those of ``myst_nb.glue(key, IPython.display.Markdown(text), display=False)``;
    written here directly because importing myst-nb's glue module (its notebook reader) costs seconds
    in every chapter."""
    from IPython.core.formatters import format_display_data
    from IPython.display import Markdown, display

    for key, text in glued.items():
        bundle, metadata = format_display_data(Markdown(text))
        metadata["scrapbook"] = {"name": key, "mime_prefix": GLUE_PREFIX}
        display({GLUE_PREFIX + mime: value for mime, value in bundle.items()}, raw=True, metadata=metadata)


#: Profile whose runs the exercise solutions are measured on.
SOLUTIONS_PROFILE = "default"

#: The notebook (book page) that runs every exercise's change and shows the measured solutions.
SOLUTIONS_DOC = "07_exercise_solutions"


def chapter_glue(prof: Profile, chapter: int, threads: int | None = None) -> dict[str, str]:
    """Markdown for a chapter's glue keys: ``time-box`` and ``<label>-task`` for each of its exercises.
    Nothing is run here: the solutions are measured by :func:`solutions_glue` on their own page."""
    out = {f"{ex.label}-task": exercise_text(ex) for ex in chapter_exercises(chapter)}
    out["time-box"] = time_box(prof, chapter, threads)
    return out


def solutions_glue(prof: Profile, threads: int | None = None) -> dict[str, str]:
    """Markdown for the solutions page: ``<label>-solution`` for every exercise and ``solutions-time``.

    Under the :data:`SOLUTIONS_PROFILE` profile every exercise's change is run (or its finished run reused)
    and measured beside the book's run; under another profile each solution says how to get it."""
    out: dict[str, str] = {}
    if prof.name != SOLUTIONS_PROFILE:
        for ex in EXERCISES:
            out[f"{ex.label}-solution"] = (f"The measured solutions belong to the `{SOLUTIONS_PROFILE}` profile; "
                                           f"run this notebook with `profile = \"{SOLUTIONS_PROFILE}\"` to see them.")
        out["solutions-time"] = f"No exercise was run: this page was executed with the `{prof.name}` profile."
        return out
    book = profiles.load_profile(prof.name, device=prof.device)
    seconds = {}
    for ex in EXERCISES:
        result = run_exercise(book, ex)
        seconds[ex.chapter] = seconds.get(ex.chapter, 0.0) + result.seconds
        out[f"{ex.label}-solution"] = solution(result)
    out["solutions-time"] = solutions_time(seconds, threads)
    return out


def machine_text(threads: int | None = None) -> str:
    """``"2 CPU cores, 1 torch thread"``: where a recorded time was measured."""
    cores = os.cpu_count() or 1
    text = f"{cores} CPU core{'s' if cores != 1 else ''}"
    return text + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else "")


def solutions_time(seconds: Mapping[int, float], threads: int | None = None) -> str:
    """One sentence: how long the exercises' own runs took, in all and per chapter."""
    where = machine_text(threads)
    total = sum(seconds.values())
    if total < 1:
        return f"Every change reused finished runs when this page was built ({where})."
    parts = ", ".join(f"chapter {ch} {duration(s)}" for ch, s in sorted(seconds.items()) if s >= 1)
    return (f"The changes ran in {duration(total)} in all when this page was built ({where}): {parts}. "
            "A second build reuses them.")


def exercise_text(exercise: Exercise) -> str:
    """Markdown of the exercise statement: the question and the line to type."""
    return f"{exercise.task}\n\n```python\n{exercise.overrides_text()}\n```"


# --- chapter run times -----------------------------------------------------------------------------------

def chapter_seconds(prof: Profile, chapter: int) -> float | None:
    """Seconds the chapter's stages took when they last ran (None when none has a recorded time)."""
    times = pipeline.run_times(prof)
    if times.empty:
        return None
    part = times[times["stage"].isin(CHAPTER_STAGES[chapter])]
    seconds = pd.to_numeric(part["seconds"], errors="coerce").dropna()
    return float(seconds.sum()) if len(seconds) else None


def duration(seconds: float) -> str:
    """``"45 s"`` or ``"3.2 min"``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def time_box(prof: Profile, chapter: int, threads: int | None = None) -> str:
    """The time line of a chapter's opening box, from the run times the pipeline recorded."""
    seconds = chapter_seconds(prof, chapter)
    where = "on " + machine_text(threads)
    stages = ", ".join(f"`{s}`" for s in CHAPTER_STAGES[chapter])
    if not CHAPTER_STAGES[chapter]:
        main = "no stage of its own: it analyses the embeddings chapter 3 wrote (UMAP is the slowest step)"
    elif seconds is None:
        main = f"the stage {stages} was reused from an earlier run, so no time was recorded"
    else:
        main = f"{duration(seconds)} for the stage{'s' if len(CHAPTER_STAGES[chapter]) > 1 else ''} {stages}"
    return f"{main}, measured when this book was built ({where}). A second run reuses the results in seconds."


def run_time_table(prof: Profile) -> pd.DataFrame:
    """:func:`mtmg.runs.pipeline.run_times` with the chapter of each stage and what its time includes."""
    includes = {"zeroshot": "zero-shot heads and scoring; also MiniCLIP pretraining when its weights were not "
                            "in cache/ yet",
                "patch": "fine-tuning, the α sweep on validation and test splits",
                "align": "teacher embeddings, distillation, evaluation",
                "embeddings": "embedding the test tiles with every model",
                "zeroshot_patched": "zero-shot scoring of the patched model"}
    chapter = {stage: ch for ch, stages in CHAPTER_STAGES.items() for stage in stages}
    times = pipeline.run_times(prof)
    out = pd.DataFrame({"stage": times["stage"], "chapter": [chapter.get(s, "") for s in times["stage"]],
                        "seconds": times["seconds"], "includes": [includes.get(s, "") for s in times["stage"]],
                        "finished": times["finished"]})
    return out


# --- the exercises ---------------------------------------------------------------------------------------

EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "ex-untrained-clip", 1, "An untrained CLIP",
        {"zeroshot.clip.pretrained": None}, "zeroshot",
        "Score a MiniCLIP with random weights instead of the pretrained ones. Predict its zero-shot "
        "accuracy on EuroSAT and on the supported task before you run it.",
        "A randomly initialised CLIP has text and image towers that were never trained to agree, so its "
        "zero-shot head carries no information about the images: both scores fall to around chance "
        "(10 % for ten classes). The gap between this floor and the pretrained model is what pretraining "
        "bought; on EuroSAT that margin is small in the miniature, which is the distribution shift this "
        "chapter is about. Random weights differ on every run, so your numbers will differ by a few points."),
    Exercise(
        "ex-validation-tiles", 1, "Other tiles, same model",
        {"zeroshot.tasks.0.test_split": "val"}, "zeroshot",
        "Score zero-shot CLIP on the 50 validation tiles instead of the 50 test tiles. How far apart "
        "are the two accuracies, and what does that tell you about the precision of a 50-tile score?",
        "Nothing about the model changed, only which 50 tiles are scored: the difference is sampling "
        "noise. With 5 tiles per class one tile moves the accuracy by 2 points; the binomial standard "
        "error of an accuracy p on 50 tiles is about √(p(1−p)/50), 5–7 points here. Read every miniature "
        "number in this book with that precision in mind."),
    Exercise(
        "ex-training-tiles", 1, "A zero-shot model has no training set",
        {"zeroshot.tasks.0.test_split": "train"}, "zeroshot",
        "Score zero-shot CLIP on the 100 training tiles instead of the 50 test tiles. Is that cheating? "
        "What do you expect compared with the test score?",
        "It is not cheating here: the zero-shot model has never seen any EuroSAT tile (chapter 2 is the first "
        "to train on them), so for it the training tiles are simply 100 more unseen tiles. Their accuracy "
        "differs from the test accuracy only by sampling noise, which is smaller with 100 tiles than with "
        "50. After patching the same comparison would be meaningless, because the patched model was "
        "fine-tuned on exactly these tiles."),
    Exercise(
        "ex-coarse-alpha", 2, "A coarser α grid",
        {"patch.alphas": [0.0, 0.25, 0.5, 0.75, 1.0]}, "patch",
        "Sweep α in steps of 0.25 instead of 0.1. Does the selected α move, and does the patched "
        "model's test accuracy change?",
        "The fine-tuning itself is the same (same seed, same data), so the end points α = 0 and α = 1 "
        "keep their scores; only the candidates between them change. The rule picks the best mean "
        "validation score among the candidates, so with a coarser grid it can only pick one of 0.25, "
        "0.5 or 0.75 and the test score at the selected α follows that choice."),
    Exercise(
        "ex-patch-seed", 2, "Another seed",
        {"patch.train.seed": 1}, "patch",
        "Fine-tune with seed 1 instead of 0. How much does the selected α move?",
        "The seed changes the order of the training batches and the augmentations, so the fine-tuned "
        "weights and every score between α = 0 and α = 1 change a little (α = 0 is the untouched "
        "zero-shot model and keeps its score). With only 5 validation tiles per class, small changes in "
        "the validation curve are enough to move the selected α: the choice of α is noisy in the "
        "miniature, as the README's three seeds also show."),
    Exercise(
        "ex-patch-short", 2, "Less fine-tuning",
        {"patch.train.epochs": 5}, "patch",
        "Fine-tune for 5 epochs instead of 30. Predict what happens to the EuroSAT gain and to the "
        "supported task at α = 1.",
        "Fewer steps move the weights less far from the zero-shot ones: the fine-tuned end point "
        "(α = 1) gains less on EuroSAT and typically forgets less of the supported task, and the "
        "interpolation has less to trade off."),
    Exercise(
        "ex-cls-weight-zero", 3, "Without the classification term",
        {"align.cls_weight": 0.0}, "align",
        "Set the weight of the classification term (`cls_weight`, 0.05 by default) to 0, so the student "
        "only imitates its teacher's embeddings. Does the student still classify better than its teacher?",
        "Without the term the student never sees a label: everything it knows about the classes comes "
        "from copying the teacher's embeddings of the same tiles, so any advantage over the teacher must "
        "come from the 10 extra bands and from the training itself. Compare the student's accuracy "
        "here with the book's run to see how much the small label term (weight 0.05) contributed."),
    Exercise(
        "ex-cosine-loss", 3, "Cosine instead of squared error",
        {"align.feature_loss": "cosine"}, "align",
        "Use the cosine feature loss instead of the mean squared error. Zero-shot classification and "
        "retrieval only compare directions: should the change matter?",
        "The squared error also asks the student to match the length of each teacher embedding; the "
        "cosine loss asks only for its direction, which is all that zero-shot classification and "
        "retrieval use (both normalise first). The two losses give different gradients and so "
        "different students; the table shows which one served this miniature better."),
    Exercise(
        "ex-no-augment", 3, "No augmentation",
        {"align.augment": "none"}, "align",
        "Switch off the D4 augmentation (flips and quarter turns) of the paired views. Predict the "
        "effect on the student's test accuracy and on retrieval.",
        "With 100 training tiles the student sees every tile in one orientation only: it can fit the "
        "training tiles more easily and has fewer distinct examples to generalise from. The D4 "
        "symmetries are free extra data for images seen from above, which is why the default uses them."),
    Exercise(
        "ex-gap-cls-weight", 4, "The gap without the label term",
        {"align.cls_weight": 0.0}, "gap",
        "With `cls_weight = 0` (the run of *Without the classification term* in chapter 3), does the "
        "student's MS cloud sit closer to its teacher's RGB cloud or to the text, compared with the book's run?",
        "The classification term pulls the student's embeddings towards the class-prompt vectors; without "
        "it the student only imitates the teacher. Compare the text↔MS and RGB↔MS gaps in the two runs: "
        "the change in the text↔MS gap is the effect of the label term on where the student sits."),
    Exercise(
        "ex-gap-cosine", 4, "The gap under a cosine loss",
        {"align.feature_loss": "cosine"}, "gap",
        "With the cosine feature loss (the run of *Cosine instead of squared error* in chapter 3), is the "
        "RGB↔MS gap smaller or larger, and how similar are the two views of a tile?",
        "The gap is measured between unit-normalised embeddings, so it depends only on directions. The "
        "cosine loss optimises the cosine between the two views of each training tile; whether that carries "
        "over to the 50 test tiles is what the last row shows. Retrieval (chapter 3's exercise) depends on "
        "the ranking of the similarities rather than on their mean, so it can improve while the mean cosine "
        "and the gap do not."),
    Exercise(
        "ex-gap-fewer-tiles", 4, "A gap from fewer tiles",
        {"embed_max": 20}, "gap",
        "Embed only 20 test tiles instead of all 50. How much do the centroid gaps move?",
        "Nothing was retrained: the same models embed a random subset of 20 tiles. A centroid averages "
        "fewer vectors, so its estimate is noisier, and a gap between two noisy centroids tends to be a "
        "little larger than the gap between the true means. The differences in the table are the "
        "precision of the gap estimates in this miniature."),
    Exercise(
        "ex-seed-1", 5, "Another seed for the student",
        {"align.train.seed": 1}, "benchmark",
        "Distil the student with seed 1 (the patched teacher stays the book's). Which of this chapter's "
        "conclusions about the student survive? Chapter 2's exercise *Another seed* does the same for stage 1; "
        "the notebook parameter `seed = 1` changes both stages at once.",
        "The seed changes the student's initial weights, the order of the batches and the augmentations; "
        "the teacher and every number of stage 1 stay exactly as they were (the patching rows of the table "
        "do not move). Conclusions that hold for both seeds (the student retrieves far above chance, it "
        "classifies MS tiles at least as well as before training) are findings of the method; differences "
        "of a few points are noise of a 50-tile test set. Report a miniature result as a range over seeds, "
        "never as one number."),
    Exercise(
        "ex-heavy-label-term", 5, "A heavier label term",
        {"align.cls_weight": 0.5}, "align",
        "Raise the weight of the classification term from 0.05 to 0.5. Predict what happens to the "
        "student's zero-shot accuracy and to RGB↔MS retrieval.",
        "A heavier label term makes the student more of a supervised classifier of the 100 training tiles "
        "and less of a copy of its teacher. Zero-shot accuracy can rise or fall (it is scored with the "
        "same frozen head the term trains through, but on unseen tiles), while retrieval depends only on "
        "how closely the student reproduces the teacher's embedding of each tile. The table shows which "
        "way each moved in this miniature: a trade-off between the two goals of the loss."),
    Exercise(
        "ex-align-short", 5, "A shorter distillation",
        {"align.train.epochs": 20}, "align",
        "Distil for 20 epochs instead of 60. How much of the student's accuracy and retrieval is left?",
        "Fewer epochs leave the student further from its teacher: the feature loss has not come down as "
        "far (see chapter 3's curve), so both zero-shot accuracy on MS and retrieval, which depend on "
        "how well the student reproduces the teacher's space, are expected to drop."),
)


# --- chapter 5's tables ----------------------------------------------------------------------------------

def benchmark_views(table: pd.DataFrame, gap_dataset: str) -> dict[str, pd.DataFrame]:
    """:func:`mtmg.book.report.benchmark_table` as one table per chapter: a row per model and quantity, a column
    per dataset. The modality-gap rows, which the long table files under their split, are named after
    ``gap_dataset`` (the data the embeddings came from); quantities a dataset does not have show "—"."""
    long = table.drop(columns=[c for c in ("profile",) if c in table]).copy()
    gap_rows = long["chapter"].str.contains("gap")
    long.loc[gap_rows, "dataset"] = gap_dataset
    unit = long["unit"].map(lambda u: f" ({u})" if u else "")
    long["quantity"] = long["quantity"] + unit
    views = {}
    for chapter, part in long.groupby("chapter", sort=True):
        view = part.pivot_table(index=["model", "quantity"], columns="dataset", values="value", aggfunc="first",
                                sort=False)
        view.columns.name = None
        views[chapter] = view.round(2).astype(object).where(view.notna(), "—")  # no NaN cells on the page
    return views

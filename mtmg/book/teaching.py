"""The book's teaching frame, computed from runs: chapter run times and exercises with measured solutions.

Every exercise is one change to a profile, written as the ``overrides`` a learner passes to a chapter
notebook (dotted config keys, see :func:`mtmg.runs.profiles.load_profile`). :func:`run_exercise` runs that
change (the run store gives every parameter set its own folders and reuses the stages the change does
not touch, so a change to stage 2 re-runs stage 2 only and never overwrites the book's run) and
measures the quantities the exercise asks about; :func:`solution` sets them beside the book's run.

The exercises' text lives beside the book in ``book/exercises.yaml`` (:func:`load_exercises`): the run
exercises, one coding exercise per chapter (checked against the library by :func:`check_code`), and each
chapter's conceptual questions and discussion prompts.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtmg.book import report, views
from mtmg.core import paths
from mtmg.core.config import parse_yaml
from mtmg.core.errors import ConfigError
from mtmg.data.sentinel2 import ndvi
from mtmg.evaluation import gap, metrics
from mtmg.method import losses
from mtmg.models.clip import ZeroShotHead
from mtmg.runs import pipeline, profiles
from mtmg.runs.profiles import Profile

#: The stages each chapter runs, in the order the pipeline records them (chapter 4 analyses chapter 3's).
CHAPTER_STAGES = {chapter: pipeline.chapter_stages(chapter) for chapter in range(1, 6)}


@dataclass(frozen=True)
class Exercise:
    """One change a learner makes through a chapter's ``overrides`` parameter.

    ``measure`` names what is compared (a key of :data:`MEASURES`); ``task`` is the question (Markdown);
    ``explanation`` is the reasoning a solution gives beside the measured numbers; ``expect`` the expected
    outcome in one line (for facilitators); ``reuses`` the label of the exercise whose run this one reads.
    """

    label: str
    chapter: int
    title: str
    overrides: Mapping[str, Any]
    measure: str
    task: str
    explanation: str
    expect: str = ""
    reuses: str | None = None

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
    """The predict-then-run exercises of one chapter, in order."""
    return [ex for ex in EXERCISES if ex.chapter == chapter]


def chapter_code_exercises(chapter: int) -> list[CodeExercise]:
    """The coding exercises of one chapter, in order."""
    return [ex for ex in CODE_EXERCISES if ex.chapter == chapter]


#: MIME prefix under which myst-nb finds a glued value that the notebook does not display.
GLUE_PREFIX = "application/papermill.record/"


def glue_markdown(glued: Mapping[str, str]) -> None:
    """Store each Markdown text under its key for the book's ``{glue:md}`` roles and directives.

    The outputs are those of ``myst_nb.glue(key, IPython.display.Markdown(text), display=False)``;
    written here directly because importing myst-nb's glue module (its notebook reader) costs seconds
    in every chapter."""
    from IPython.core.formatters import format_display_data  # imported here: only a notebook kernel needs IPython
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
    """Markdown for a chapter's glue keys: ``time-box``, ``questions`` and ``<label>-task`` for each of its
    exercises. Nothing is run here: the solutions are measured by :func:`solutions_glue` on their own page."""
    out = {f"{ex.label}-task": exercise_text(ex) for ex in chapter_exercises(chapter)}
    out |= {f"{ex.label}-task": code_exercise_text(ex) for ex in chapter_code_exercises(chapter)}
    out["questions"] = questions_text(chapter)
    out["time-box"] = time_box(prof, chapter, threads)
    return out


def solutions_glue(prof: Profile, threads: int | None = None) -> dict[str, str]:
    """Markdown for the solutions page: ``<label>-solution`` for every exercise and ``solutions-time``.

    Under the :data:`SOLUTIONS_PROFILE` profile every exercise's change is run (or its finished run reused)
    and measured beside the book's run; under another profile each solution says how to get it. Every coding
    exercise's ``<label>-solution`` is its tested solution."""
    out: dict[str, str] = {f"{ex.label}-solution": code_solution_text(ex) for ex in CODE_EXERCISES}
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
        try:
            fitted = views.layout_seconds(pipeline.stage_folder(prof, "embeddings"))
        except FileNotFoundError:  # chapter 3's stages have not run: no embeddings, no maps
            fitted = None
        main = ("no training stage of its own (it analyses the embeddings chapter 3 wrote); "
                + (f"{duration(fitted)} to fit the UMAP and PCA maps" if fitted is not None else
                   "the maps were read from an earlier run, so no time was recorded"))
    elif seconds is None:
        main = f"the stage {stages} was reused from an earlier run, so no time was recorded"
    else:
        main = f"{duration(seconds)} for the stage{'s' if len(CHAPTER_STAGES[chapter]) > 1 else ''} {stages}"
    return f"{main}, measured when this book was built ({where}). A second run reuses the results in seconds."


def run_time_table(prof: Profile) -> pd.DataFrame:
    """:func:`mtmg.runs.pipeline.run_times` with the chapter of each stage and what its time includes."""
    includes = {name: stage.includes for name, stage in pipeline.STAGES.items()}
    chapter = {stage: ch for ch, stages in CHAPTER_STAGES.items() for stage in stages}
    times = pipeline.run_times(prof)
    out = pd.DataFrame({"stage": times["stage"], "chapter": [chapter.get(s, "") for s in times["stage"]],
                        "seconds": times["seconds"], "includes": [includes.get(s, "") for s in times["stage"]],
                        "finished": times["finished"]})
    return out


# --- the exercises ---------------------------------------------------------------------------------------

#: The exercises' data: questions, override lines, expected outcomes, discussion prompts, coding exercises.
EXERCISES_FILE = paths.PROJECT_ROOT / "book" / "exercises.yaml"


@dataclass(frozen=True)
class Question:
    """A conceptual question of a chapter with its answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class CodeExercise:
    """A function a learner writes; :func:`check_code` compares it with the library's on random inputs."""

    label: str
    chapter: int
    title: str
    task: str
    starter: str
    solution: str
    explanation: str


@dataclass(frozen=True)
class Exercises:
    """Everything ``book/exercises.yaml`` holds."""

    runs: tuple[Exercise, ...]
    code: tuple[CodeExercise, ...]
    questions: dict[int, tuple[Question, ...]]
    discussion: dict[int, tuple[str, ...]]


def load_exercises(path: str | os.PathLike = EXERCISES_FILE) -> Exercises:
    """Read the exercises' data file; a missing field names the file, the entry and the field."""
    path = Path(path)
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))

    def field_of(entry: Mapping[str, Any], name: str, where: str) -> Any:
        if name not in entry:
            raise ConfigError(f"{path}: {where} has no {name!r}; add it (see the comment at the top of the file)")
        return entry[name]

    runs = []
    for i, e in enumerate(data.get("runs") or []):
        where = f"runs[{i}] ({e.get('id', '?')})"
        measure = field_of(e, "measure", where)
        if measure not in MEASURES:
            raise ConfigError(f"{path}: {where} measures {measure!r}; use one of {sorted(MEASURES)}")
        runs.append(Exercise(field_of(e, "id", where), int(field_of(e, "chapter", where)), field_of(e, "title", where),
                             dict(field_of(e, "overrides", where)), measure, field_of(e, "question", where),
                             field_of(e, "explanation", where), field_of(e, "expect", where), e.get("reuses")))
    code = []
    for i, e in enumerate(data.get("code") or []):
        where = f"code[{i}] ({e.get('id', '?')})"
        label = field_of(e, "id", where)
        if label not in CODE_CHECKS:
            raise ConfigError(f"{path}: {where} has no check; known: {sorted(CODE_CHECKS)}")
        code.append(CodeExercise(label, int(field_of(e, "chapter", where)), field_of(e, "title", where),
                                 field_of(e, "question", where), field_of(e, "starter", where),
                                 field_of(e, "solution", where), field_of(e, "explanation", where)))
    chapters = data.get("chapters") or {}
    questions = {int(ch): tuple(Question(q["question"], q["answer"]) for q in part.get("questions") or [])
                 for ch, part in chapters.items()}
    discussion = {int(ch): tuple(part.get("discussion") or []) for ch, part in chapters.items()}
    labels = [ex.label for ex in runs] + [ex.label for ex in code]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(f"{path}: ids {duplicates} appear more than once; every id must be unique")
    return Exercises(tuple(runs), tuple(code), questions, discussion)


# --- coding exercises: the library's function and random inputs to compare on -------------------------------

def _reference_ndvi(tile: np.ndarray) -> np.ndarray:
    return ndvi(tile)


def _inputs_ndvi(rng: np.random.Generator) -> tuple:
    return (rng.uniform(0.01, 0.6, size=(13, 8, 8)),)


def _reference_head(features: torch.Tensor, class_text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    return ZeroShotHead(class_text, logit_scale)(features)


def _inputs_head(rng: np.random.Generator) -> tuple:
    return (torch.from_numpy(rng.normal(size=(6, 16))).float(), torch.from_numpy(rng.normal(size=(4, 16))).float(),
            float(rng.uniform(1, 100)))


def _reference_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return losses.feature_loss("cosine", student, teacher)


def _inputs_pair(rng: np.random.Generator) -> tuple:
    return tuple(torch.from_numpy(rng.normal(size=(12, 16))).float() for _ in range(2))


def _reference_cone(x: np.ndarray) -> float:
    return gap.cone_statistic(x)


def _inputs_cone(rng: np.random.Generator) -> tuple:
    return (rng.normal(size=(12, 16)) + rng.normal(size=16),)


def _reference_recall(query: torch.Tensor, gallery: torch.Tensor) -> float:
    return metrics.recall_at_k(query, gallery, (1,))[1]


def _inputs_recall(rng: np.random.Generator) -> tuple:
    query = torch.from_numpy(rng.normal(size=(20, 16))).float()
    return query, query + torch.from_numpy(rng.normal(scale=1.2, size=(20, 16))).float()


#: For each coding exercise: the library function a learner's must agree with, and a random-input maker.
CODE_CHECKS: dict[str, tuple[Callable[..., Any], Callable[[np.random.Generator], tuple]]] = {
    "code-ndvi": (_reference_ndvi, _inputs_ndvi),
    "code-head-logits": (_reference_head, _inputs_head),
    "code-cosine-loss": (_reference_cosine, _inputs_pair),
    "code-cone": (_reference_cone, _inputs_cone),
    "code-recall-at-1": (_reference_recall, _inputs_recall),
}


def check_code(label: str, fn: Callable[..., Any], trials: int = 5, seed: int = 0) -> str:
    """Compare a learner's function with the library's on ``trials`` random inputs.

    Returns a one-line verdict that starts with ``"Correct"`` when every result agrees (to 1e-5),
    otherwise with ``"Not yet"`` and the first disagreement."""
    if label not in CODE_CHECKS:
        raise ValueError(f"no coding exercise {label!r}; use one of {sorted(CODE_CHECKS)}")
    reference, make_inputs = CODE_CHECKS[label]
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        inputs = make_inputs(rng)
        expected = np.asarray(_as_numpy(reference(*inputs)), dtype=float)
        try:
            got = np.asarray(_as_numpy(fn(*inputs)), dtype=float)
        except Exception as exc:  # noqa: BLE001 - a learner's error is reported, not raised
            return f"Not yet: the function raised {type(exc).__name__}: {exc}"
        if got.shape != expected.shape:
            return f"Not yet: trial {trial + 1} returned shape {got.shape}, the library {expected.shape}"
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
            worst = float(np.max(np.abs(got - expected)))
            return f"Not yet: trial {trial + 1} differs from the library by up to {worst:.3g}"
    return f"Correct: equal to the library's result on {trials} random inputs"


def _as_numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def code_exercise_text(exercise: CodeExercise) -> str:
    """Markdown of a coding exercise: the task, the code to complete and how to check it."""
    return (f"{exercise.task}\n\n```python\n{exercise.starter.rstrip()}\n```\n\n"
            f"Check it in a new cell with `teaching.check_code(\"{exercise.label}\", "
            f"{_function_name(exercise.starter)})`.")


def code_solution_text(exercise: CodeExercise) -> str:
    """Markdown of a coding exercise's solution (the one the test suite checks) and its explanation."""
    return f"```python\n{exercise.solution.rstrip()}\n```\n\n{exercise.explanation}"


def _function_name(code: str) -> str:
    return re.search(r"^def (\w+)", code, flags=re.M).group(1)


def questions_text(chapter: int) -> str:
    """Markdown of a chapter's conceptual questions, each answer in a collapsed block."""
    blocks = []
    for i, q in enumerate(EXERCISE_DATA.questions.get(chapter, ()), 1):
        blocks.append(f"{i}. {q.question}\n\n   ```{{admonition}} Answer\n   :class: dropdown\n\n"
                      f"   {q.answer}\n   ```")
    return "\n\n".join(blocks)


EXERCISE_DATA = load_exercises()
EXERCISES: tuple[Exercise, ...] = EXERCISE_DATA.runs
CODE_EXERCISES: tuple[CodeExercise, ...] = EXERCISE_DATA.code


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

"""The README's result tables, computed from the run store: ``python -m mtmg results --seeds 0 1 2`` prints them.

Each row is one training seed of the default profile's two stages (MiniCLIP fixed): the stages run, or are
reused from ``runs/default`` when they already ran with the same settings (the thread count included).
"""
from __future__ import annotations

from collections.abc import Sequence

from mtmg.evaluation.baselines import BAND_STATISTICS, BENCHMARK, protocol_name
from mtmg.evaluation.probe import ALL, difference_table, load_test_scores
from mtmg.runs import pipeline, profiles

RESULTS_HEADER = ("| seed | selected α | EuroSAT test top-1: zero-shot → selected α (α = 1) | supported task: "
                  "zero-shot → selected α (α = 1) | student on MS / patched teacher on RGB | RGB↔MS recall@1 "
                  "(ms→rgb / rgb→ms; chance 2 %) |\n|---|---|---|---|---|---|")
PROBE_HEADER = ("| seed | student (aligned) on MS: 1 / 2 / 5 tiles per class / all | student before alignment on MS: "
                "1 / 2 / 5 / all | difference, all tiles (95 % interval) | same, CLIP_benchmark protocol | "
                "band statistics, all tiles: mtmg probe / CLIP_benchmark protocol |\n|---|---|---|---|---|---|")


def _score(scores, task: str, alpha: float) -> float:
    rows = scores[(scores["task"] == task) & (scores["split"] == "test") & ((scores["alpha"] - alpha).abs() < 1e-9)]
    return float(rows["value"].iloc[0])


def _result(results, model: str, modality: str, metric: str) -> float:
    rows = results[(results["model"] == model) & (results["modality"] == modality) & (results["metric"] == metric)
                   & (results["split"] == "test") & (results["dataset"] == "eurosat_ms")]
    return float(rows["value"].iloc[0])


def results_row(seed: int, profile: str = "default") -> list[str]:
    """The cells of one row of the README's first table for training seed ``seed``."""
    prof = profiles.load_profile(profile, seed=seed)
    patch, align = pipeline.ensure_patch(prof), pipeline.ensure_align(prof)
    task, supported = prof.patch.task.name, prof.patch.supported[0].name
    eurosat = [100 * _score(patch.scores, task, a) for a in (0.0, patch.alpha, 1.0)]
    support = [100 * _score(patch.scores, supported, a) for a in (0.0, patch.alpha, 1.0)]
    r = align.results
    return [str(seed), f"{patch.alpha:g}", "{:.0f} → {:.0f} ({:.0f})".format(*eurosat),
            "{:.1f} → {:.1f} ({:.1f})".format(*support),
            f"{100 * _result(r, 'student', 'ms', 'top1'):.0f} / {100 * _result(r, 'clip_patched', 'rgb', 'top1'):.0f}",
            f"{100 * _result(r, 'student', 'ms->rgb', 'recall@1'):.0f} / "
            f"{100 * _result(r, 'student', 'rgb->ms', 'recall@1'):.0f}"]


def probe_row(seed: int, profile: str = "default") -> list[str]:
    """The cells of one row of the README's probe table for training seed ``seed`` (EuroSAT-MS test top-1)."""
    prof = profiles.load_profile(profile, seed=seed)
    run = pipeline.ensure_probe(prof)
    res = run.results[run.results["dataset"] == "eurosat_ms"]

    def curve(model: str) -> str:
        means = res[res["model"] == model].groupby("shots")["value"].mean()
        few = [f"{100 * means[k]:.1f}" for k in sorted(k for k in means.index if k != ALL)]
        return " / ".join([*few, f"{100 * means[ALL]:.0f}"])

    def difference(frame) -> str:
        r = frame[(frame["dataset"] == "eurosat_ms") & (frame["shots"] == "all")].iloc[0]
        return f"{r['difference']:+.0f} ({r['low']:+.0f} to {r['high']:+.0f})"

    scores = load_test_scores(run.out_dir)
    bench = difference_table(scores, protocol_name("student", BENCHMARK), protocol_name("student_init", BENCHMARK),
                             n_boot=prof.probe.bootstrap)
    base = run.baselines[(run.baselines["dataset"] == "eurosat_ms") & (run.baselines["model"] == BAND_STATISTICS)
                         & (run.baselines["shots"] == ALL)].set_index("protocol")["value"]
    return [str(seed), curve("student"), curve("student_init"), difference(run.differences), difference(bench),
            " / ".join(f"{100 * base[p]:.0f}" for p in ("mtmg", BENCHMARK))]


def markdown_rows(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as Markdown table rows."""
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def tables(seeds: Sequence[int], profile: str = "default") -> str:
    """Both README tables for ``seeds``, as Markdown."""
    return "\n\n".join([RESULTS_HEADER + "\n" + markdown_rows([results_row(s, profile) for s in seeds]),
                        PROBE_HEADER + "\n" + markdown_rows([probe_row(s, profile) for s in seeds])])

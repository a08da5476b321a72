"""Report helpers for the paper comparison: the two AP conventions on a run's embeddings, the probe
summary and table, the abstract's gains without a backbone label."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from mtmg.book import report
from mtmg.evaluation import probe


def _embeddings(n=300, c=6, seed=0):
    """CLIP-like embeddings: every image-text cosine positive (a shared direction), images nearer their
    own class's text vector."""
    g = torch.Generator().manual_seed(seed)
    noise = lambda *shape: torch.randn(*shape, generator=g) / 32 ** 0.5  # noqa: E731
    shared = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    text = torch.nn.functional.normalize(shared + noise(c, 32), dim=1)
    labels = torch.randint(c, (n,), generator=g)

    def images(strength):
        return shared + strength * text[labels] + 0.5 * noise(n, 32)
    return SimpleNamespace(class_text=text, targets=labels, multilabel=False, rgb_zeroshot=images(0.1),
                           rgb_patched=images(0.3), ms_student=images(0.3))


def test_ap_conventions_show_the_collapse_on_the_runs_logits():
    table = report.ap_conventions(_embeddings())
    assert list(table.index) == ["CLIP zero-shot on RGB", "CLIP patched on RGB", "student (aligned) on MS"]
    prevalence = table["class prevalence (%)"]
    assert np.allclose(prevalence, 100 / 6, atol=0.01)  # rounded to 2 decimals
    assert (table["macro AP (%)"] > prevalence + 15).all()
    assert (abs(table["authors' convention, bf16 (%)"] - prevalence) < 5).all()
    text = report.summarize_ap_conventions(table)
    assert f"{table['macro AP (%)'].iloc[1]:.1f} %" in text


def test_abstract_gains_name_no_backbone():
    assert all("ViT" not in r.model for r in report.PAPER_GAINS)
    assert {r.dataset for r in report.PAPER_PROBE} == {"BigEarthNet-5"}


def _probe_rows():
    rows = []
    for model, full, one in (("student", 0.8, 0.5), ("student_init", 0.6, 0.3), ("clip_patched", 0.7, 0.4),
                             ("clip_zeroshot", 0.5, 0.2)):
        rows.append({"dataset": "eurosat_ms", "model": model, "modality": probe.ENCODERS[model][0],
                     "shots": probe.ALL, "seed": 0, "metric": "top1", "value": full, "n_test": 40})
        for seed, delta in ((0, 0.0), (1, 0.1)):
            rows.append({"dataset": "eurosat_ms", "model": model, "modality": probe.ENCODERS[model][0],
                         "shots": 1, "seed": seed, "metric": "top1", "value": one + delta, "n_test": 40})
    return pd.DataFrame(rows)


def test_probe_table_and_summary():
    results = _probe_rows()
    table = probe.probe_table(results)
    assert list(table.columns) == ["1 per class", "all"]
    assert table.loc[("eurosat_ms", "student (aligned) on MS"), "1 per class"] == 55.0
    assert table.loc[("eurosat_ms", "student before alignment on MS"), "all"] == 60.0
    text = report.summarize_probe(results)
    # without an interval a higher score is reported, never called a gain
    assert "80.0 % against 60.0 %" in text and "not called a gain" in text and "**above**" not in text
    assert "55.0 % vs 35.0 %" in text
    assert "40 tiles: one tile more or less moves a score by 2.5 points" in text
    assert "resolve" not in text
    differences = pd.DataFrame([
        {"dataset": "eurosat_ms", "shots": "1 per class", "difference": 20.0, "low": 5.0, "high": 35.0,
         "n_test": 40, "clear": True},
        {"dataset": "eurosat_ms", "shots": "all", "difference": 2.5, "low": -5.0, "high": 10.0, "n_test": 40,
         "clear": False}])
    text = report.summarize_probe(results, differences)
    assert "resolve (95 % paired-bootstrap interval excluding zero): 1 per class (+20.0 points" in text
    assert "within noise: all." in text


def test_probe_cli_rejects_a_malformed_data_root(capsys):
    from mtmg.cli import main

    assert main(["probe", "--data-root", "no-equals-sign"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err

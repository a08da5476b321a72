"""Metrics against independent references: scikit-learn, torchmetrics and brute-force loops."""

import math

import numpy as np
import pytest
import torch
import torchmetrics.functional.classification as tmc
from sklearn import metrics as skm

from mtmg.evaluation import metrics


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _single_label(rng, n=300, c=7):
    targets = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), targets] += rng.normal(0.8, 1.0, n)  # better than chance, not perfect
    return logits.astype(np.float32), targets


def test_top1_accuracy_matches_sklearn_and_torchmetrics(rng):
    logits, targets = _single_label(rng)
    acc = metrics.top1_accuracy(torch.from_numpy(logits), torch.from_numpy(targets))
    assert acc == pytest.approx(skm.accuracy_score(targets, logits.argmax(1)))
    tm = tmc.multiclass_accuracy(torch.from_numpy(logits), torch.from_numpy(targets), num_classes=7, average="micro")
    assert acc == pytest.approx(float(tm), abs=1e-6)
    assert 0.2 < acc < 0.95


def test_per_class_accuracy_and_confusion_matrix(rng):
    logits, targets = _single_label(rng)
    targets[targets == 3] = 4  # class 3 has no samples
    cm = metrics.confusion_matrix(logits, targets)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(targets, logits.argmax(1), labels=range(7)))
    per_class = metrics.per_class_accuracy(logits, targets)
    assert math.isnan(per_class[3])
    reference = skm.recall_score(targets, logits.argmax(1), labels=[0, 1, 2, 4, 5, 6], average=None)
    np.testing.assert_allclose(np.delete(per_class, 3), reference)
    tm = tmc.multiclass_accuracy(torch.from_numpy(logits), torch.from_numpy(targets), num_classes=7, average=None)
    np.testing.assert_allclose(np.delete(per_class, 3), np.delete(tm.numpy(), 3), atol=1e-6)


def test_predicted_labels_are_accepted(rng):
    preds = rng.integers(0, 4, 50)
    targets = rng.integers(0, 4, 50)
    assert metrics.top1_accuracy(preds, targets) == pytest.approx((preds == targets).mean())
    assert metrics.confusion_matrix(preds, targets, num_classes=5).shape == (5, 5)


def _multilabel(rng, n=200, c=6, ties=False):
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    scores = rng.normal(size=(n, c)) + 1.2 * targets
    if ties:
        scores = np.round(scores)  # few distinct values: many tied scores
    return scores, targets


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn_and_torchmetrics(rng, ties):
    scores, targets = _multilabel(rng, ties=ties)
    ap = metrics.average_precision_per_class(torch.from_numpy(scores).float(), torch.from_numpy(targets))
    reference = [skm.average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    np.testing.assert_allclose(ap, reference, atol=1e-6)
    tm = tmc.multilabel_average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets),
                                          num_labels=scores.shape[1], average=None)
    np.testing.assert_allclose(ap, tm.numpy(), atol=1e-5)
    assert metrics.macro_average_precision(scores, targets) == pytest.approx(
        skm.average_precision_score(targets, scores, average="macro"), abs=1e-6)


def test_class_without_positives_is_nan_and_excluded(rng):
    scores, targets = _multilabel(rng)
    targets[:, 2] = 0
    ap = metrics.average_precision_per_class(scores, targets)
    assert math.isnan(ap[2]) and np.isfinite(np.delete(ap, 2)).all()
    assert metrics.macro_average_precision(scores, targets) == pytest.approx(np.delete(ap, 2).mean())
    assert math.isnan(metrics.macro_average_precision(scores, np.zeros_like(targets)))


def test_average_precision_of_a_perfect_and_a_reversed_ranking():
    targets = np.array([[1], [1], [0], [0]])
    assert metrics.average_precision_per_class(np.array([[4.0], [3.0], [2.0], [1.0]]), targets)[0] == 1.0
    # positives ranked last: precision 1/3 at the first positive, 2/4 at the second
    reversed_ap = metrics.average_precision_per_class(np.array([[1.0], [2.0], [3.0], [4.0]]), targets)[0]
    assert reversed_ap == pytest.approx((1 / 3 + 2 / 4) / 2)


def _brute_force_recall(query, gallery, ks):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    hits = {k: 0 for k in ks}
    for i in range(len(q)):
        own = float(q[i] @ g[i])
        rank = sum(1 for j in range(len(g)) if j != i and float(q[i] @ g[j]) >= own)
        for k in ks:
            hits[k] += rank < k
    return {k: hits[k] / len(q) for k in ks}


def test_recall_at_k_matches_brute_force(rng):
    a = rng.normal(size=(120, 16)).astype(np.float32)
    b = (a + rng.normal(scale=1.5, size=a.shape)).astype(np.float32)
    ks = (1, 5, 10, 20, 50)
    got = metrics.recall_at_k(torch.from_numpy(a), torch.from_numpy(b), ks)
    expected = _brute_force_recall(a.astype(np.float64), b.astype(np.float64), ks)
    assert got == pytest.approx(expected)
    assert 0 < got[1] < got[50] < 1
    both = metrics.retrieval_recalls(a, b, ks, names=("ms", "rgb"))
    assert both["ms->rgb"] == got
    assert both["rgb->ms"] == pytest.approx(_brute_force_recall(b.astype(np.float64), a.astype(np.float64), ks))


def test_recall_chunks_agree(rng, monkeypatch):
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    whole = metrics.recall_at_k(a, b)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    assert metrics.recall_at_k(a, b) == whole


def test_ties_count_against_the_query():
    # every gallery item is identical: the positive ties with all others and is ranked last
    query = np.eye(4)[:3]
    gallery = np.ones((3, 4))
    r = metrics.recall_at_k(query, gallery, ks=(1, 2, 3))
    assert r == {1: 0.0, 2: 0.0, 3: 1.0}
    # the result does not depend on the gallery order
    duplicate = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.recall_at_k(duplicate, duplicate, ks=(1, 2)) == pytest.approx({1: 1 / 3, 2: 1.0})


def test_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        metrics.recall_at_k(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="class indices"):
        metrics.top1_accuracy(np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_precision_per_class(np.full((2, 1), np.nan), np.ones((2, 1)))


def _clip_like_logits(rng, n=2000, c=8, prevalence=0.15):
    """100 * cos logits: cosines near 0.25, positives 0.04 higher (a good but imperfect ranking)."""
    targets = (rng.random((n, c)) < prevalence).astype(np.float32)
    cos = 0.25 + 0.04 * targets + 0.015 * rng.normal(size=(n, c))
    return torch.from_numpy(100 * cos), torch.from_numpy(targets)


def test_authors_convention_collapses_to_prevalence_on_bf16_logits(rng):
    logits, targets = _clip_like_logits(rng)
    correct = metrics.macro_average_precision(logits, targets)
    authors = metrics.authors_macro_average_precision(logits, targets)  # bf16, as under autocast
    prevalence = float(targets.mean())
    assert correct > 0.75
    assert abs(authors - prevalence) < 0.05
    assert metrics.authors_macro_average_precision(logits.float(), targets, "float32") < correct - 0.3
    # in float64 the sigmoid keeps the order (but for a few ties): the convention then nearly agrees
    in_float64 = metrics.authors_macro_average_precision(logits.double(), targets, "float64")
    assert in_float64 == pytest.approx(correct, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_authors_convention_equals_torchmetrics(rng, dtype):
    logits, targets = _clip_like_logits(rng, n=400, c=5)
    targets[:, 4] = 0  # an empty class counts as 0 in torchmetrics
    want = tmc.multilabel_average_precision(logits.to(dtype), targets.long(), num_labels=5, average="macro")
    got = metrics.authors_macro_average_precision(logits, targets, dtype)
    assert got == pytest.approx(float(want), abs=1e-6)


def test_empty_class_rule_is_a_parameter():
    scores = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    assert metrics.macro_average_precision(scores, targets) == 1.0
    assert metrics.macro_average_precision(scores, targets, empty_class="zero") == 0.5
    assert metrics.classes_scored(targets) == 1
    with pytest.raises(ValueError, match="empty_class"):
        metrics.macro_average_precision(scores, targets, empty_class="one")


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_macro_ap_equals_ap_of_the_repeated_items(rng, ties):
    n, c = 30, 4
    scores = rng.normal(size=(n, c))
    if ties:
        scores = np.round(scores, 0)
    targets = (rng.random((n, c)) < 0.3).astype(float)
    targets[:, 3] = 0
    targets[:2, 3] = 1  # a rare class: missing from some resamples, which then leave it out
    counts = rng.multinomial(n, np.full(n, 1 / n), size=25)
    counts[0] = 1  # the items themselves
    got = metrics.resampled_macro_average_precision(scores, targets, counts)
    idx = [np.repeat(np.arange(n), row) for row in counts]
    want = [metrics.macro_average_precision(scores[i], targets[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[0] == pytest.approx(metrics.macro_average_precision(scores, targets))
    assert any(not targets[i, 3].any() for i in idx)
    with pytest.raises(ValueError, match="counts"):
        metrics.resampled_macro_average_precision(scores, targets, counts[:, :5])

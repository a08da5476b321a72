"""Bootstrap intervals (mtmg.evaluation.intervals) against a direct computation: resamples built item by item."""
import numpy as np
import pytest
import torch

from mtmg.evaluation import intervals, metrics, probe


def _direct(metric, n, n_boot, seed=0):
    """The same resamples as intervals.bootstrap (one block), each scored on the repeated items themselves."""
    drawn = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    values = np.array([metric(idx) for idx in drawn])
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return metric(np.arange(n)), low, high


def _data(n=40, c=5, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[targets] * rng.integers(0, 2, (n, 1))
    return scores, targets


def test_top1_interval_equals_direct_resampling():
    scores, targets = _data()
    found = intervals.score_interval([scores], targets, False, n_boot=300, seed=3)
    value, low, high = _direct(lambda i: metrics.top1_accuracy(scores[i], targets[i]), len(targets), 300, seed=3)
    assert found.value == pytest.approx(value) and found.low == pytest.approx(low) and found.high == pytest.approx(high)
    assert found.low < found.value < found.high and found.n == len(targets)


def test_paired_top1_difference_equals_direct_resampling():
    a, targets = _data(seed=1)
    b, _ = _data(seed=2)
    b = b[:, np.random.default_rng(5).permutation(b.shape[1])]
    found = intervals.difference_interval([a], [b], targets, False, n_boot=400)
    def top1_difference(i):
        return metrics.top1_accuracy(a[i], targets[i]) - metrics.top1_accuracy(b[i], targets[i])

    value, low, high = _direct(top1_difference, len(targets), 400)
    assert (found.value, found.low, found.high) == pytest.approx((value, low, high))


def test_macro_ap_interval_and_difference_equal_direct_resampling():
    rng = np.random.default_rng(4)
    y = (rng.random((30, 4)) < 0.3).astype(np.float64)
    a, b = y + rng.normal(0, 0.8, y.shape), rng.normal(size=y.shape)
    one = intervals.score_interval([a], y, True, n_boot=200)
    assert (one.value, one.low, one.high) == pytest.approx(
        _direct(lambda i: metrics.macro_average_precision(a[i], y[i]), 30, 200))
    diff = intervals.difference_interval([a], [b], y, True, n_boot=200)
    assert (diff.value, diff.low, diff.high) == pytest.approx(_direct(
        lambda i: metrics.macro_average_precision(a[i], y[i]) - metrics.macro_average_precision(b[i], y[i]), 30, 200))


def test_recall_hits_mean_is_recall_at_k_and_interval_is_direct():
    g = torch.randn(25, 8)
    q = g + 0.9 * torch.randn(25, 8)
    for k in (1, 5):
        hits = intervals.retrieval_hits(q, g, k)
        assert hits.mean() == pytest.approx(metrics.recall_at_k(q, g, [k])[k])
    hits = intervals.retrieval_hits(q, g, 1)
    found = intervals.hit_interval(hits, n_boot=250, seed=7)
    assert (found.value, found.low, found.high) == pytest.approx(_direct(lambda i: hits[i].mean(), 25, 250, seed=7))


def test_probe_paired_difference_is_the_interval_function():
    a, targets = _data(seed=8)
    b, _ = _data(seed=9)
    found = intervals.difference_interval([a], [b], targets, False, n_boot=500)
    assert probe.paired_difference([a], [b], targets, False, n_boot=500) == (found.value, found.low, found.high)


def test_interval_text_and_scaling():
    i = intervals.Interval(0.38, 0.24, 0.52, 50).scaled(100)
    assert i.text() == "38.0 (24.0 to 52.0)"
    assert intervals.Interval(2.0, -4.0, 8.0, 50).text(signed=True) == "+2.0 (-4.0 to +8.0)"
    assert not intervals.Interval(2.0, -4.0, 8.0, 50).clear and intervals.Interval(2.0, 1.0, 3.0, 50).clear


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one row per test item"):
        intervals.score_interval([np.zeros((3, 2))], np.zeros(4, dtype=int), False)
    with pytest.raises(ValueError, match="one shape"):
        intervals.hit_difference_interval(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="at least one test item"):
        intervals.hit_interval(np.ones(0))

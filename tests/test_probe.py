"""Linear probe: constructed features with a known answer."""

import numpy as np
import pytest

from mtmg import probe
from mtmg.probe import Split


def _clusters(rng, n_per_class, n_classes=5, dim=16, spread=0.3):
    """Well-separated Gaussian clusters around random unit centres, in three splits."""
    centres = rng.normal(size=(n_classes, dim))
    def split(n):
        y = np.repeat(np.arange(n_classes), n)
        return Split(centres[y] + spread * rng.normal(size=(len(y), dim)), y)
    return split(n_per_class), split(n_per_class), split(n_per_class)


def _multilabel(rng, n, n_classes=4, dim=12):
    """Feature j > 0 exactly when class j is present (plus noise dimensions)."""
    y = (rng.random((n, n_classes)) < 0.4).astype(np.float32)
    x = np.concatenate([np.where(y > 0, 1.0, -1.0) + 0.2 * rng.normal(size=y.shape),
                        rng.normal(size=(n, dim - n_classes))], axis=1)
    return Split(x, y)


def test_separable_single_label_reaches_full_accuracy():
    rng = np.random.default_rng(0)
    train, val, test = _clusters(rng, 20)
    result = probe.linear_probe(train, val, test, multilabel=False)
    assert result.metric == "top1"
    assert result.value >= 0.99
    assert result.C in probe.DEFAULT_CS and result.n_train == 100 and result.n_test == len(test.targets)


def test_shuffled_labels_stay_near_chance():
    rng = np.random.default_rng(1)
    train, val, test = _clusters(rng, 40)
    shuffled = [Split(s.features, rng.permutation(s.targets)) for s in (train, val, test)]
    values = [probe.linear_probe(*shuffled, multilabel=False, seed=s).value for s in range(3)]
    assert np.mean(values) < 0.2 + 0.12  # chance is 1 / 5


def test_separable_multilabel_reaches_full_ap_and_shuffled_does_not():
    rng = np.random.default_rng(2)
    train, val, test = (_multilabel(rng, 120) for _ in range(3))
    good = probe.linear_probe(train, val, test, multilabel=True)
    assert good.metric == "macro_ap" and good.value >= 0.99
    perm = rng.permutation(len(train.targets))
    bad = probe.linear_probe(Split(train.features, train.targets[perm]), val, test, multilabel=True)
    prevalence = test.targets.mean()
    assert bad.value < prevalence + 0.2


def test_few_shot_indices_give_k_per_class():
    targets = np.repeat(np.arange(4), 10)
    idx = probe.few_shot_indices(targets, 2, seed=0)
    assert np.bincount(targets[idx], minlength=4).tolist() == [2, 2, 2, 2]
    assert idx != probe.few_shot_indices(targets, 2, seed=1)
    multi = np.zeros((6, 2))
    multi[:4, 0] = 1
    multi[2:, 1] = 1
    chosen = probe.few_shot_indices(multi, 1, seed=0)
    assert all(multi[chosen, c].sum() >= 1 for c in range(2))


def test_few_shot_curve_improves_with_shots_on_noisy_clusters():
    rng = np.random.default_rng(3)
    train, val, test = _clusters(rng, 30, spread=1.5)
    rows = probe.few_shot_curve(train, val, test, False, shots=(1, probe.ALL), seeds=(0, 1, 2))
    one = np.mean([r["value"] for r in rows if r["shots"] == 1])
    full = [r["value"] for r in rows if r["shots"] == probe.ALL]
    assert len(full) == 1 and full[0] > one
    assert {r["n_train"] for r in rows if r["shots"] == 1} == {5}


def test_single_class_training_split_is_refused():
    rng = np.random.default_rng(4)
    train, val, test = _clusters(rng, 5)
    with pytest.raises(ValueError, match="single class"):
        probe.linear_probe(train.subset(range(5)), val, test, multilabel=False)

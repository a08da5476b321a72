"""Linear probe: constructed features with a known answer."""

import numpy as np
import pytest

from mtmg.evaluation import probe
from mtmg.evaluation.probe import Split


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


def _one_hot_scores(predictions, n_classes):
    return np.eye(n_classes)[np.asarray(predictions)]


def test_probe_result_scores_reproduce_its_value():
    rng = np.random.default_rng(5)
    train, val, test = _clusters(rng, 10, spread=1.2)
    result = probe.linear_probe(train, val, test, multilabel=False)
    assert result.test_scores.shape == (len(test.targets), 5)
    assert (result.test_scores.argmax(axis=1) == test.targets).mean() == result.value


def test_paired_difference_of_one_tile_in_fifty_is_within_noise():
    targets = np.arange(50) % 10
    a = _one_hot_scores(targets, 10)
    wrong = targets.copy()
    wrong[:20] = (wrong[:20] + 1) % 10  # b misses 20 tiles, a misses 19 of them
    b = _one_hot_scores(wrong, 10)
    a_wrong = wrong.copy()
    a_wrong[0] = targets[0]
    diff, low, high = probe.paired_difference([_one_hot_scores(a_wrong, 10)], [b], targets, False)
    assert diff == pytest.approx(0.02)
    assert low <= 0 < high
    diff, low, high = probe.paired_difference([a], [b], targets, False)  # 20 tiles apart
    assert diff == pytest.approx(0.4) and 0 < low < 0.4 < high
    assert probe.paired_difference([a], [a], targets, False) == (0.0, 0.0, 0.0)


def test_paired_difference_averages_draws_and_handles_multilabel():
    targets = np.arange(40) % 4
    right, wrong = _one_hot_scores(targets, 4), _one_hot_scores((targets + 1) % 4, 4)
    diff, _, _ = probe.paired_difference([right, wrong], [wrong], targets, False)
    assert diff == pytest.approx(0.5)
    rng = np.random.default_rng(6)
    y = (rng.random((60, 3)) < 0.4).astype(float)
    y[0] = 1
    good = y + 0.1 * rng.normal(size=y.shape)
    noise = rng.normal(size=y.shape)
    diff, low, high = probe.paired_difference([good], [noise], y, True, n_boot=300)
    assert diff > 0.3 and low > 0 and low <= diff <= high
    with pytest.raises(ValueError, match="one row per test item"):
        probe.paired_difference([good[:10]], [noise], y, True)


def test_difference_table_reads_the_scores_file(tmp_path):
    targets = np.arange(50) % 10
    right, wrong = _one_hot_scores(targets, 10), _one_hot_scores((targets + 1) % 10, 10)
    near = _one_hot_scores(np.where(np.arange(50) == 0, (targets + 1) % 10, targets), 10)
    arrays = {"eurosat_ms/targets": targets, "eurosat_ms/student/0/0": right, "eurosat_ms/student_init/0/0": wrong,
              "eurosat_ms/student/1/0": right, "eurosat_ms/student/1/1": right,
              "eurosat_ms/student_init/1/0": near, "eurosat_ms/student_init/1/1": right}
    np.savez(tmp_path / probe.SCORES_FILE, **arrays)
    table = probe.difference_table(tmp_path)
    assert list(table["shots"]) == ["1 per class", "all"]
    one, full = table.iloc[0], table.iloc[1]
    assert full["difference"] == 100.0 and full["clear"] and full["n_test"] == 50
    assert one["difference"] == 1.0 and not one["clear"]
    with pytest.raises(FileNotFoundError, match="python -m mtmg probe"):
        probe.difference_table(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="python -m mtmg probe"):
        probe.load_differences(tmp_path)

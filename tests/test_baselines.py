"""Baselines of the probe: band statistics, and CLIP_benchmark's protocol checked against CLIP_benchmark's own code."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtmg.evaluation import baselines
from mtmg.evaluation.probe import Split, linear_probe


def _features(n, d=16, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.normal(size=(n, d)) + 3.0 * np.eye(c, d)[y]
    return Split(x, y)


def test_band_statistics_are_the_mean_and_std_of_each_band():
    ms = torch.rand(3, 13, 8, 8)
    feats = baselines.BandStatistics()(ms)
    assert feats.shape == (3, 26)
    x = ms.numpy().reshape(3, 13, -1)
    np.testing.assert_allclose(feats[:, :13].numpy(), x.mean(axis=2), rtol=1e-5)
    np.testing.assert_allclose(feats[:, 13:].numpy(), x.std(axis=2), rtol=1e-5)
    train, val, test = _features(40), _features(20, seed=1), _features(20, seed=2)
    assert linear_probe(train, val, test, False).value > 0.5  # the same probe takes any features


def test_protocol_searches_the_weight_decay_and_refits_on_train_and_validation():
    train, val, test = _features(40), _features(20, seed=1), _features(20, seed=2)
    r = baselines.benchmark_probe(train, val, test, False)
    assert r.weight_decay in baselines.WEIGHT_DECAYS and r.n_train == 60 and r.test_scores.shape == (20, 4)
    assert r.value > 0.5
    few = baselines.benchmark_probe(train, val, test, False, refit=False)
    assert few.n_train == 40
    rows = baselines.benchmark_curve(train, val, test, False, shots=(1, 0), seeds=(0, 1))
    assert [(row["shots"], row["seed"]) for row in rows] == [(1, 0), (1, 1), (0, 0)]
    assert rows[0]["n_train"] == 4 and rows[2]["n_train"] == 60


def test_multilabel_protocol_scores_macro_ap():
    rng = np.random.default_rng(3)
    y = (rng.random((50, 3)) < 0.4).astype(np.float64)
    x = rng.normal(size=(50, 8)) + 2 * np.pad(y, ((0, 0), (0, 5)))
    r = baselines.benchmark_probe(Split(x[:30], y[:30]), Split(x[30:40], y[30:40]), Split(x[40:], y[40:]), True)
    assert r.metric == "macro_ap" and 0 <= r.value <= 1


@pytest.fixture()
def clip_benchmark_on_cpu(monkeypatch):
    """CLIP_benchmark's linear probe (the ``bench`` extra) with its ``.cuda()`` calls made no-ops."""
    lp = pytest.importorskip("clip_benchmark.metrics.linear_probe")
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    # its top-k accuracy converts a 1-element array with float(), which NumPy 2 refuses: the same top-1 here
    monkeypatch.setattr(lp, "accuracy", lambda output, target, topk: [
        float((output.topk(1, 1, True, True)[1][:, 0] == target).float().mean())])
    return lp


def test_linear_layer_equals_clip_benchmarks_train(clip_benchmark_on_cpu):
    lp = clip_benchmark_on_cpu
    split = _features(70)
    x = torch.nn.functional.normalize(torch.as_tensor(split.features, dtype=torch.float32), dim=-1)
    y = torch.as_tensor(split.targets)
    loader = DataLoader(lp.FeatureDataset(x, y), batch_size=64, shuffle=True)
    theirs = lp.train(loader, x.shape[1], 4, 1e-3, 0.1, 10, False, "cpu", 0)
    ours = baselines.train_linear(x, y, 4, 1e-3, seed=0)
    state = {k.removeprefix("module."): v for k, v in theirs.state_dict().items()}
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)


def test_weight_decay_search_and_test_score_equal_clip_benchmarks(clip_benchmark_on_cpu):
    lp = clip_benchmark_on_cpu
    train, val, test = _features(48, seed=4), _features(24, seed=5), _features(24, seed=6)

    def loader(*splits):
        x = torch.cat([torch.nn.functional.normalize(torch.as_tensor(s.features, dtype=torch.float32), dim=-1)
                       for s in splits])
        y = torch.cat([torch.as_tensor(s.targets) for s in splits])
        return DataLoader(lp.FeatureDataset(x, y), batch_size=64, shuffle=True)

    wds = np.logspace(-6, 2, num=97).tolist()
    args = (loader(train), loader(val), 16, 4, 0.1, 10, False, "cpu", False, 0)
    peak = lp.find_peak(wds, [i for i, v in enumerate(wds) if v in np.logspace(-6, 2, num=7).tolist()], *args)
    span = 8
    while span > 0:
        peak = lp.find_peak(wds, [max(peak - span, 0), peak, min(peak + span, len(wds) - 1)], *args)
        span //= 2
    final = lp.train(loader(train, val), 16, 4, wds[peak], 0.1, 10, False, "cpu", 0)
    logits, target = lp.infer(final, DataLoader(loader(test).dataset, batch_size=64), False, "cpu")
    ours = baselines.benchmark_probe(train, val, test, False)
    assert ours.weight_decay == wds[peak]
    np.testing.assert_allclose(ours.test_scores, logits.double().numpy(), rtol=0, atol=0)
    assert ours.value == pytest.approx(float((logits.argmax(1) == target).float().mean()))


def test_baseline_rows_band_statistics_every_shot_and_each_encoder_under_clip_benchmark():
    splits = {"train": _features(40), "val": _features(20, seed=1), "test": _features(20, seed=2)}
    feats = {s: {"student": f, baselines.BAND_STATISTICS: f} for s, f in splits.items()}
    rows, arrays = baselines.baseline_rows("d", feats, ["student"], False, shots=(1, 0), seeds=(0, 1), Cs=(1.0,))
    seen = {(r["model"], r["protocol"], r["shots"], r["seed"]) for r in rows}
    assert seen == {("bands", "mtmg", 1, 0), ("bands", "mtmg", 1, 1), ("bands", "mtmg", 0, 0),
                    ("student", "clip_benchmark", 0, 0), ("bands", "clip_benchmark", 0, 0)}
    assert set(arrays) == {"d/bands/1/0", "d/bands/1/1", "d/bands/0/0", "d/student@clip_benchmark/0/0",
                           "d/bands@clip_benchmark/0/0"}

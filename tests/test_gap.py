"""Modality-gap measures on constructed embeddings of known geometry."""

import math

import numpy as np
import pandas as pd
import pytest

from mtmg.evaluation import gap

D = 16
C = 0.6  # cosine of every embedding with +e0 (x side) or -e0 (y side)
S = math.sqrt(1 - C**2)


def unit_rows(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    """n random unit vectors orthogonal to e0."""
    w = rng.normal(size=(n, d))
    w[:, 0] = 0.0
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def symmetric(w: np.ndarray) -> np.ndarray:
    """w stacked with -w: a set whose centroid is exactly zero."""
    return np.concatenate([w, -w])


def cones(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired unit sets x_i = C e0 + S w_i, y_i = -C e0 + S w_i with mean(w) = 0: gap = 2C e0."""
    w = symmetric(unit_rows(rng, n // 2))
    e0 = np.eye(D)[0]
    return C * e0 + S * w, -C * e0 + S * w


def test_known_centroid_offset_is_recovered_unpaired():
    rng = np.random.default_rng(0)
    x = C * np.eye(D)[0] + S * symmetric(unit_rows(rng, 25))
    y = -C * np.eye(D)[0] + S * symmetric(unit_rows(rng, 7))
    scale = rng.uniform(0.5, 3.0, size=(len(x), 1))  # measures must normalise first
    result = gap.modality_gap(x * scale, y)
    np.testing.assert_allclose(result.vector, 2 * C * np.eye(D)[0], atol=1e-12)
    assert result.magnitude == pytest.approx(2 * C, abs=1e-12)
    assert result.mean_paired_distance is None
    assert gap.gap_magnitude(y, x) == pytest.approx(2 * C, abs=1e-12)
    np.testing.assert_allclose(gap.gap_vector(y, x), -result.vector, atol=1e-12)


def test_paired_gap_reports_paired_distance_and_cosine():
    x, y = cones(np.random.default_rng(1), 40)
    result = gap.modality_gap(x, y, paired=True)
    assert result.magnitude == pytest.approx(2 * C, abs=1e-12)
    assert result.mean_paired_distance == pytest.approx(2 * C, abs=1e-12)
    assert result.mean_paired_cosine == pytest.approx(S**2 - C**2, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        gap.modality_gap(x, y[:-2], paired=True)


def test_identical_sets_have_zero_gap():
    x = np.random.default_rng(2).normal(size=(30, D))
    result = gap.modality_gap(x, x.copy(), paired=True)
    assert result.magnitude == 0.0
    assert result.mean_paired_distance == pytest.approx(0.0, abs=1e-12)
    assert result.mean_paired_cosine == pytest.approx(1.0, abs=1e-12)


def test_torch_and_numpy_inputs_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, D)), rng.normal(size=(12, D))
    expected = gap.gap_magnitude(x, y)
    assert gap.gap_magnitude(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-12)
    assert gap.gap_magnitude(torch.from_numpy(x).bfloat16(), y) == pytest.approx(expected, abs=2e-2)


def test_cone_statistic_extremes_and_brute_force():
    v = np.random.default_rng(4).normal(size=D)
    assert gap.cone_statistic(np.tile(v, (9, 1))) == pytest.approx(1.0, abs=1e-12)
    assert gap.cone_statistic(np.eye(D)) == pytest.approx(0.0, abs=1e-12)
    x = np.random.default_rng(5).normal(size=(25, D)) + 1.0
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    brute = sims[~np.eye(25, dtype=bool)].mean()
    assert gap.cone_statistic(x) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        gap.cone_statistic(v[None])


def test_shift_by_full_gap_closes_it_exactly():
    x, y = cones(np.random.default_rng(6), 40)
    magnitude = gap.gap_magnitude(x, y)
    xs, ys = gap.shift_along_gap(x, y, magnitude)
    assert gap.gap_magnitude(xs, ys) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.linalg.norm(xs, axis=1), 1.0, atol=1e-12)
    # half the gap: both sides sit at cosine C/2 (before re-normalisation) with e0
    xh, yh = gap.shift_along_gap(x, y, magnitude / 2)
    expected = 2 * (C / 2) / math.sqrt((C / 2) ** 2 + S**2)
    assert gap.gap_magnitude(xh, yh) == pytest.approx(expected, abs=1e-12)


def test_shift_shrinks_a_generic_gap_monotonically():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, D)) + 2.0 * np.eye(D)[1]
    y = rng.normal(size=(10, D)) - 2.0 * np.eye(D)[2]
    magnitude = gap.gap_magnitude(x, y)
    gaps = [gap.gap_magnitude(*gap.shift_along_gap(x, y, lam)) for lam in np.linspace(0, magnitude, 6)]
    assert gaps[0] == pytest.approx(magnitude)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.5 * magnitude


def test_shift_experiment_matches_direct_computation():
    rng = np.random.default_rng(8)
    n_classes, per_class = 4, 15
    labels = np.repeat(np.arange(n_classes), per_class)
    text = rng.normal(size=(n_classes, D)) - 1.5 * np.eye(D)[0]
    images = text[labels] + 1.5 * rng.normal(size=(len(labels), D)) + 3.0 * np.eye(D)[0]
    lambdas = [-0.5, 0.0, 0.4, 1.2]
    table = gap.shift_experiment(images, text, lambdas, labels=labels, names=("image", "text"))
    assert list(table.columns) == ["lambda", "gap", "gap_signed", "metric", "direction", "k", "value"]
    assert table["lambda"].tolist() == lambdas
    assert set(table["metric"]) == {"top1"} and set(table["direction"]) == {"image->text"}

    def norm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    xn, yn = norm(images), norm(text)
    u = xn.mean(0) - yn.mean(0)
    u /= np.linalg.norm(u)
    accuracies = []
    for lam, row in zip(lambdas, table.itertuples()):
        xs, ys = norm(xn - lam / 2 * u), norm(yn + lam / 2 * u)
        assert row.gap == pytest.approx(np.linalg.norm(xs.mean(0) - ys.mean(0)), abs=1e-12)
        accuracies.append(((xs @ ys.T).argmax(1) == labels).mean())
    np.testing.assert_allclose(table["value"].to_numpy(), accuracies, atol=1e-12)
    assert len(set(accuracies)) > 1  # the construction makes the shift matter
    assert table.loc[table["lambda"] == 0.0, "gap"].item() == pytest.approx(gap.gap_magnitude(images, text))
    assert table.loc[table["lambda"] == 1.2, "gap_signed"].item() < table.loc[table["lambda"] == 0.0, "gap"].item()


def test_shift_experiment_retrieval_on_paired_sets():
    x, y = cones(np.random.default_rng(9), 30)
    table = gap.shift_experiment(x, y, [0.0, 2 * C], paired=True, ks=(1, 5), names=("rgb", "ms"))
    assert len(table) == 2 * 2 * 2
    assert set(table["direction"]) == {"rgb->ms", "ms->rgb"}
    assert sorted(set(table["k"])) == [1, 5]
    at_full = table[table["lambda"] == 2 * C]
    assert at_full["gap"].max() == pytest.approx(0.0, abs=1e-12)
    # y_i is x_i mirrored through the e0-hyperplane, so item i is always its own nearest neighbour
    assert (table["value"] == 1.0).all()
    with pytest.raises(ValueError, match="labels"):
        gap.shift_experiment(x, y, [0.0])


def test_paired_cosine_and_summary():
    t = np.linspace(0.0, 1.0, 101)
    a = np.tile(np.eye(D)[0], (101, 1))
    b = t[:, None] * np.eye(D)[0] + np.sqrt(1 - t**2)[:, None] * np.eye(D)[1]
    cos = gap.paired_cosine(a, 3.0 * b)
    np.testing.assert_allclose(cos, t, atol=1e-12)
    summary = gap.summarize(cos)
    assert list(summary.index) == ["mean", "std", "q05", "q25", "q50", "q75", "q95"]
    np.testing.assert_allclose(summary[["q05", "q25", "q50", "q75", "q95"]], [0.05, 0.25, 0.5, 0.75, 0.95])
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["std"] == pytest.approx(np.std(t, ddof=1))


def two_modalities(seed: int = 10):
    x, y = cones(np.random.default_rng(seed), 30)
    labels = {"rgb": [f"c{i % 3}" for i in range(30)], "text": [f"c{i % 3}" for i in range(30)]}
    return {"rgb": x, "text": y}, labels


def test_pca_layout_is_deterministic_and_fitted_jointly():
    sets, labels = two_modalities()
    first = gap.reduce_2d(sets, labels, method="pca", seed=0)
    second = gap.reduce_2d(sets, labels, method="pca", seed=0)
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == ["x", "y", "modality", "label"]
    assert first["modality"].tolist() == ["rgb"] * 30 + ["text"] * 30
    # the gap is the dominant direction of the joint fit: the first axis splits the modalities
    side = np.sign(first["x"].to_numpy())
    assert len(set(side[:30])) == 1 and len(set(side[30:])) == 1 and side[0] != side[-1]


def test_umap_layout_is_identical_across_runs():
    pytest.importorskip("umap")
    sets, labels = two_modalities()
    first = gap.reduce_2d(sets, labels, method="umap", seed=3, n_epochs=50)
    second = gap.reduce_2d(sets, labels, method="umap", seed=3, n_epochs=50)
    assert first.shape == (60, 4)
    pd.testing.assert_frame_equal(first, second)
    assert np.isfinite(first[["x", "y"]].to_numpy()).all()


_KERNEL_COMPILES = """
import importlib, json
from mtmg.evaluation import gap
gap.compile_umap()
stats = {f"{m}.{n}": dict(getattr(importlib.import_module(m), n).stats.cache_misses)
         for m, n in gap.UMAP_UNCACHED_KERNELS}
print(json.dumps({k: sum(v.values()) for k, v in stats.items()}))
"""


def test_umap_kernels_compile_once_per_installation():
    """The kernels umap leaves uncached are compiled by the first process only (``make install`` runs it);
    a later process loads them from numba's cache: no misses."""
    pytest.importorskip("umap")
    import json
    import subprocess
    import sys

    run = lambda: json.loads(subprocess.run([sys.executable, "-c", _KERNEL_COMPILES], check=True,
                                            capture_output=True, text=True).stdout.splitlines()[-1])
    run()  # compiles whatever is not cached yet
    misses = run()
    assert set(misses) == {f"{m}.{n}" for m, n in gap.UMAP_UNCACHED_KERNELS}
    assert misses == dict.fromkeys(misses, 0), f"recompiled in a new process: {misses}"


def test_reduce_2d_rejects_bad_input():
    sets, _ = two_modalities()
    with pytest.raises(ValueError, match="method"):
        gap.reduce_2d(sets, method="tsne")
    with pytest.raises(ValueError, match="labels"):
        gap.reduce_2d(sets, {"rgb": ["a"]}, method="pca")


def test_plot_reduction_has_two_filled_panels():
    sets, labels = two_modalities()
    layout = gap.reduce_2d(sets, {"rgb": labels["rgb"]}, method="pca")
    fig = gap.plot_reduction(layout, title="gap")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.collections) > 0
        assert sum(len(c.get_offsets()) for c in ax.collections) == 60
    assert len(fig.axes[0].collections) == 2  # one per modality


def test_gap_summary_table():
    rng = np.random.default_rng(11)
    x, y = cones(rng, 20)
    ms = x + 0.1 * rng.normal(size=x.shape)
    models = {
        "zero-shot CLIP": {"text": y, "rgb": x},
        "student": {"text": y, "rgb": x, "ms": ms},
    }
    table = gap.gap_summary(models)
    assert list(table.index) == ["zero-shot CLIP", "student"]
    assert list(table.columns) == [
        "gap_text_rgb", "gap_text_ms", "gap_rgb_ms", "cone_text", "cone_rgb", "cone_ms", "cos_rgb_ms"
    ]
    assert table.loc["zero-shot CLIP", "gap_text_rgb"] == pytest.approx(2 * C)
    assert table.loc["zero-shot CLIP", ["gap_text_ms", "gap_rgb_ms", "cone_ms", "cos_rgb_ms"]].isna().all()
    assert table.loc["student", "gap_rgb_ms"] == pytest.approx(gap.gap_magnitude(x, ms))
    assert table.loc["student", "cone_ms"] == pytest.approx(gap.cone_statistic(ms))
    assert table.loc["student", "cos_rgb_ms"] == pytest.approx(gap.paired_cosine(x, ms).mean())
    n = len(x)  # sum_{i!=j} w_i.w_j = |sum w|^2 - n = -n for the symmetric construction
    assert table.loc["student", "cone_rgb"] == pytest.approx(C**2 - S**2 / (n - 1), abs=1e-12)
    with pytest.raises(ValueError, match="'text' and 'rgb'"):
        gap.gap_summary({"bad": {"rgb": x}})


def test_exact_knn_matches_a_brute_force_search():
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    order, dist = gap.exact_knn(x, 5)
    ref_dist, ref_order = NearestNeighbors(n_neighbors=5).fit(x.astype(np.float64)).kneighbors(x)
    assert (order[:, 0] == np.arange(40)).all() and np.allclose(dist[:, 0], 0.0)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-6)

"""Band tables, reordering, MS view and RGB composite, checked on the shipped real tiles."""
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from mtmg.core.paths import DATA_DIR
from mtmg.data import sentinel2 as s2

MS = DATA_DIR / "eurosat_ms_sample"
RGB = DATA_DIR / "eurosat_rgb_sample"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as f:
        return f.read()


def _tiles(cls: str) -> list[Path]:
    return sorted((MS / cls).glob("*.tif"))


def test_band_tables_agree_with_torchgeo():
    from torchgeo.datasets import SEN12MS, EuroSAT

    assert s2.EUROSAT_FILE_BANDS == tuple(EuroSAT.all_band_names)
    assert s2.SSL4EO_BANDS == tuple(SEN12MS.BAND_SETS["s2-all"])
    assert s2.BIGEARTHNET_S2_BANDS == tuple(b for b in s2.SSL4EO_BANDS if b != "B10")
    assert set(s2.BAND_RESOLUTION_M) == set(s2.SSL4EO_BANDS)


def test_b8a_lands_at_index_8_from_the_last_file_band():
    raw = _read(_tiles("Forest")[0])
    view = s2.to_ssl4eo(raw, s2.EUROSAT_FILE_BANDS)
    assert s2.SSL4EO_BANDS[8] == "B8A"
    np.testing.assert_array_equal(view[8], raw[-1])
    np.testing.assert_array_equal(view[9], raw[8])     # B09 moves one place back
    np.testing.assert_array_equal(view[12], raw[11])   # B12
    np.testing.assert_array_equal(view[:8], raw[:8])
    assert view.dtype == np.uint16


def _mean_index(cls: str, a: str, b: str, reorder: bool = True) -> float:
    def view(p):
        return s2.to_ssl4eo(_read(p), s2.EUROSAT_FILE_BANDS) if reorder else _read(p)

    return float(np.mean([s2.normalized_difference(view(p), a, b).mean() for p in _tiles(cls)]))


def test_forest_ndvi_clearly_above_sealake_after_reordering():
    forest, sea = _mean_index("Forest", "B08", "B04"), _mean_index("SeaLake", "B08", "B04")
    assert forest > 0.5 and sea < 0.0 and forest - sea > 0.6
    np.testing.assert_allclose(forest, np.mean([s2.ndvi(s2.to_ssl4eo(_read(p), s2.EUROSAT_FILE_BANDS)).mean()
                                                for p in _tiles("Forest")]))
    # the narrow-NIR NDVI needs B8A in place: read in file order, index 8 would be B09 (water vapour)
    assert _mean_index("Forest", "B8A", "B04") > 0.5 > _mean_index("SeaLake", "B8A", "B04")
    assert _mean_index("Forest", "B8A", "B04", reorder=False) < 0.5


def test_to_ssl4eo_zero_fills_b10_and_rejects_bad_band_lists():
    arr = np.arange(12 * 2 * 2, dtype=np.uint16).reshape(12, 2, 2) + 1
    out = s2.to_ssl4eo(arr, s2.BIGEARTHNET_S2_BANDS)
    assert out.shape == (13, 2, 2) and out.dtype == np.uint16
    assert (out[s2.band_index("B10")] == 0).all()
    np.testing.assert_array_equal(out[s2.band_index("B12")], arr[-1])
    with pytest.raises(ValueError, match="missing"):
        s2.to_ssl4eo(arr[:11], s2.BIGEARTHNET_S2_BANDS[:11])
    with pytest.raises(ValueError, match="does not match"):
        s2.to_ssl4eo(arr, s2.SSL4EO_BANDS)
    with pytest.raises(ValueError, match="distinct"):
        s2.to_ssl4eo(arr, ("B01",) * 12)


def test_ms_view_scales_and_clamps():
    arr = np.zeros((13, 1, 3), dtype=np.uint16)
    arr[:, 0] = [0, 5000, 12000]
    view = s2.ms_view(arr)
    assert view.dtype == torch.float32 and view.shape == (13, 1, 3)
    torch.testing.assert_close(view[0, 0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(s2.ms_view(torch.from_numpy(arr.astype(np.int32))), view)
    with pytest.raises(ValueError, match="13"):
        s2.ms_view(arr[:12])


def test_ms_view_of_a_real_tile_runs_no_torch_kernels():
    """The per-sample MS view is numpy work: no torch kernel that the intra-op thread pool could split."""
    from torch.profiler import ProfilerActivity, profile

    raw = s2.to_ssl4eo(_read(_tiles("River")[0]), s2.EUROSAT_FILE_BANDS)
    expected = (torch.from_numpy(raw.astype(np.float32)) / 10000.0).clamp_(0.0, 1.0)
    for x in (raw, torch.from_numpy(raw.astype(np.int32))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            view = s2.ms_view(x)
        kernels = {e.name for e in prof.events()} & {"aten::div", "aten::div_", "aten::clamp", "aten::clamp_",
                                                      "aten::_to_copy", "aten::copy_"}
        assert not kernels, f"ms_view ran torch kernels {kernels}"
        assert torch.equal(view, expected)


@pytest.mark.parametrize("level,white", [("L1C", 3558.0), ("L2A", 2000.0)])
def test_rgb_composite_is_the_formula(level, white):
    arr = np.zeros((13, 1, 4), dtype=np.uint16)
    values = [0, int(white // 2), int(white), int(2 * white)]
    for k, band in enumerate(("B04", "B03", "B02")):
        arr[s2.band_index(band), 0] = [v + k for v in values]
    rgb = s2.rgb_composite(arr, level)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    for k in range(3):
        expected = [min(255, int((v + k) * 255 / white)) for v in values]
        assert rgb[0, :, k].tolist() == expected
    with pytest.raises(ValueError, match="level"):
        s2.rgb_composite(arr, "L2B")


def test_rgb_composite_of_a_real_tile_uses_b04_b03_b02():
    raw = _read(_tiles("Industrial")[0]).astype(np.float64)
    rgb = s2.rgb_composite(s2.to_ssl4eo(raw.astype(np.uint16), s2.EUROSAT_FILE_BANDS), "L1C")
    expected = np.clip(raw[[3, 2, 1]] * 255 / 3558, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("name,bound", [("AnnualCrop/AnnualCrop_1", 0.9), ("Pasture/Pasture_300", 0.9),
                                        ("SeaLake/SeaLake_3000", 0.3)])
def test_composite_correlates_with_the_original_eurosat_jpeg(name, bound):
    rgb = s2.rgb_composite(s2.to_ssl4eo(_read(MS / f"{name}.tif"), s2.EUROSAT_FILE_BANDS), "L1C").astype(float)
    jpg = np.asarray(Image.open(RGB / f"{name}.jpg").convert("RGB"), dtype=float)
    r = [np.corrcoef(rgb[..., c].ravel(), jpg[..., c].ravel())[0, 1] for c in range(3)]
    # SeaLake_3000 is a low-contrast water tile (see the data README): bound its mean correlation only
    assert (min(r) if bound >= 0.9 else np.mean(r)) > bound, r
    # the composite with swapped channels (B02 as red) must correlate worse for the land tiles
    if bound >= 0.9:
        swapped = rgb[..., ::-1]
        r_swapped = [np.corrcoef(swapped[..., c].ravel(), jpg[..., c].ravel())[0, 1] for c in (0, 2)]
        assert max(r_swapped) < min(r)


def test_ndwi_separates_water_from_forest():
    sea = np.mean([s2.ndwi(s2.to_ssl4eo(_read(p), s2.EUROSAT_FILE_BANDS)).mean() for p in _tiles("SeaLake")])
    forest = np.mean([s2.ndwi(s2.to_ssl4eo(_read(p), s2.EUROSAT_FILE_BANDS)).mean() for p in _tiles("Forest")])
    assert sea > 0 > forest

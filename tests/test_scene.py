"""Reading a Sentinel-2 scene (mtmg.data.scene) and mapping it (mtmg.mapping) with small untrained towers:
the layouts give the same arrays, L2A and B10, nodata, windows, the output grid and files, every bad scene."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine

from mtmg.core.errors import ArgumentError
from mtmg.data.datasets.errors import CorruptFileError
from mtmg.data.scene import (
    MissingBandError,
    NotASceneError,
    SceneGridError,
    SceneTooSmallError,
    band_of,
    index_fractions,
    iter_windows,
    open_scene,
    window_grid,
)
from mtmg.data.sentinel2 import BAND_RESOLUTION_M, SSL4EO_BANDS, band_index

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "s2_scene_virginia"
SIDE_M = 1920  # 192 px at 10 m: three 64 px windows a side
L1C_NAME = "S2A_MSIL1C_20160112T160642_N0201_R097_T18SVG_20160112T160642.SAFE"


def crop_band(band: str, dst: Path, *, side_m: int = SIDE_M, crs: str | None = None, shift_m: float = 0.0,
              zero_box: int = 0, dtype: str = "uint16") -> None:
    """The shipped band cut to its top-left ``side_m`` metres (native resolution), written to ``dst``;
    ``zero_box``: that many pixels of the top-left corner of a 10 m band set to 0 (nodata)."""
    res = BAND_RESOLUTION_M[band]
    n = -(-side_m // res)
    with rasterio.open(SCENE / f"{band}.tif") as src:
        data = src.read(1, window=((0, n), (0, n)))
        transform, src_crs = src.transform, src.crs
    if zero_box and res == 10:
        data[:zero_box, :zero_box] = 0
    transform = Affine(transform.a, 0, transform.c + shift_m, 0, transform.e, transform.f)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", driver="GTiff", height=n, width=n, count=1, dtype=dtype,
                       crs=crs or src_crs, transform=transform) as out:
        out.write(data.astype(dtype), 1)


def small_scene(folder: Path, bands=SSL4EO_BANDS, name="{band}.tif", **kwargs) -> Path:
    for band in bands:
        crop_band(band, folder / name.format(band=band, res=BAND_RESOLUTION_M[band]), **kwargs)
    return folder


def read_all(path, **kwargs):
    with open_scene(path, **kwargs) as scene:
        array, valid = scene.read(0, 0, scene.height, scene.width)
        return scene, array, valid


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return small_scene(tmp_path_factory.mktemp("scene") / "bands")


@pytest.fixture(scope="module")
def folder_read(folder):
    return read_all(folder)


def test_band_names_are_found_in_product_file_names():
    assert band_of("T18SVG_20160112T160642_B8A.jp2") == "B8A"
    assert band_of("T18SVG_20230101T160642_B02_10m.jp2") == "B02"
    assert band_of("B12.tif") == "B12"
    assert band_of("T18SVG_20230101T160642_TCI_10m.jp2") is None
    assert band_of("T18SVG_20230101T160642_SCL_20m.jp2") is None
    assert band_of("B13.tif") is None and band_of("preview.png") is None


def test_the_shipped_scene_reads_onto_one_10m_grid():
    with open_scene(SCENE) as scene:
        assert (scene.height, scene.width) == (1024, 1024)
        assert scene.crs.to_epsg() == 32618 and scene.transform == Affine(10, 0, 440850, 0, -10, 4174980)
        assert scene.level == "L1C" and scene.filled == ()
        array, valid = scene.read(0, 0, 64, 1024)
        assert array.shape == (13, 64, 1024) and array.dtype == np.uint16
        with rasterio.open(SCENE / "B04.tif") as src:  # 10 m bands are read as they are, no resampling
            np.testing.assert_array_equal(array[band_index("B04"), :, :1020], src.read(1, window=((0, 64), (0, 1020))))
        # the 60 m bands end 40 m short at the right and the bottom: those pixels are nodata
        _, bottom = scene.read(1020, 0, 4, 1024)
        assert not bottom.any() and valid[:, :1020].all() and not valid[:, 1020:].any()


def test_a_folder_and_the_same_bands_stacked_in_one_geotiff_give_identical_arrays(folder, folder_read, tmp_path):
    scene, array, valid = folder_read
    order = list(reversed(SSL4EO_BANDS))  # another order than the reader's: it must follow the descriptions
    profile = {"driver": "GTiff", "height": scene.height, "width": scene.width, "count": 13, "dtype": "uint16",
               "crs": scene.crs, "transform": scene.transform}
    stacked, plain = tmp_path / "stacked.tif", tmp_path / "plain.tif"
    for path, named in ((stacked, True), (plain, False)):
        with rasterio.open(path, "w", **profile) as dst:
            for i, band in enumerate(order, start=1):
                dst.write(array[band_index(band)], i)
                if named:
                    dst.set_band_description(i, band)
    _, from_stack, valid_stack = read_all(stacked)
    np.testing.assert_array_equal(from_stack, array)
    np.testing.assert_array_equal(valid_stack, valid)
    _, from_order, _ = read_all(plain, bands=order)
    np.testing.assert_array_equal(from_order, array)
    with pytest.raises(NotASceneError, match="give the band order"):
        open_scene(plain)
    with pytest.raises(ArgumentError, match="names 12 bands"):
        open_scene(plain, bands=order[:12])


def test_a_safe_tree_is_found_and_its_level_read_from_its_name(folder, folder_read, tmp_path):
    granule = tmp_path / L1C_NAME / "GRANULE" / "L1C_T18SVG_A002943_20160112T160642"
    img = granule / "IMG_DATA"
    img.mkdir(parents=True)
    for band in SSL4EO_BANDS:
        shutil.copy(folder / f"{band}.tif", img / f"T18SVG_20160112T160642_{band}.jp2")
    shutil.copy(folder / "B04.tif", img / "T18SVG_20160112T160642_TCI.jp2")  # a preview: ignored
    (granule / "QI_DATA").mkdir()
    shutil.copy(folder / "B02.tif", granule / "QI_DATA" / "MSK_DETFOO_B02.jp2")  # a mask outside IMG_DATA
    (tmp_path / L1C_NAME / "manifest.safe").write_text("<xml/>")
    scene, array, valid = read_all(tmp_path / L1C_NAME)
    assert scene.level == "L1C" and scene.level_source == "from the product's names"
    np.testing.assert_array_equal(array, folder_read[1])
    _, from_parent, _ = read_all(tmp_path)  # the folder above the product: the masks in QI_DATA are left out
    np.testing.assert_array_equal(from_parent, array)
    (tmp_path / "empty.SAFE").mkdir()
    with pytest.raises(NotASceneError, match="IMG_DATA"):
        open_scene(tmp_path / "empty.SAFE")


def test_an_l2a_product_without_b10_is_filled_with_a_warning_and_offset_by_its_metadata(folder_read, tmp_path):
    product = tmp_path / "S2A_MSIL2A_20230112T160642_N0509_R097_T18SVG_20230112T190000.SAFE"
    img = product / "GRANULE" / "L2A_T18SVG_A039000_20230112T160642" / "IMG_DATA"
    l2a = [b for b in SSL4EO_BANDS if b != "B10"]
    for band in l2a:
        res = BAND_RESOLUTION_M[band]
        crop_band(band, img / f"R{res}m" / f"T18SVG_20230112T160642_{band}_{res}m.jp2")
    crop_band("B02", img / "R20m" / "T18SVG_20230112T160642_B02_20m.jp2")  # a coarser copy: the 10 m one is read
    crop_band("B04", img / "R10m" / "T18SVG_20230112T160642_TCI_10m.jp2")
    crop_band("B05", img / "R20m" / "T18SVG_20230112T160642_SCL_20m.jp2")
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    (product / "MTD_MSIL2A.xml").write_text(
        f"<root><PROCESSING_BASELINE>05.09</PROCESSING_BASELINE><BOA_ADD_OFFSET_VALUES_LIST>{offsets}"
        "</BOA_ADD_OFFSET_VALUES_LIST></root>")
    with pytest.warns(UserWarning, match="no B10.*filled with zeros.*trained with a real B10"):
        scene, array, valid = read_all(product)
    assert scene.level == "L2A" and scene.filled == ("B10",)
    assert scene.sources["B02"].path.parent.name == "R10m"
    assert not array[band_index("B10")].any()
    expected = np.clip(folder_read[1].astype(np.int32) - 1000, 0, None)
    expected[band_index("B10")] = 0
    np.testing.assert_array_equal(array, expected)
    with pytest.warns(UserWarning, match="as the student's band record says"):
        open_scene(product, student_bands={"zero_filled": ["B10"]}).close()
    (product / "MTD_MSIL2A.xml").unlink()  # the name says baseline 05.09, but no metadata gives the offset
    with pytest.warns(UserWarning) as caught:
        _, plain, _ = read_all(product)
    assert any("processing baseline 05.09" in str(w.message) and "no MTD_MSIL" in str(w.message) for w in caught)
    np.testing.assert_array_equal(plain[band_index("B02")], folder_read[1][band_index("B02")])


def test_a_student_trained_without_b10_reads_it_as_zeros(folder):
    _, array, _ = read_all(folder, student_bands={"zero_filled": ["B10"]})
    assert not array[band_index("B10")].any()
    _, real, _ = read_all(folder)
    assert real[band_index("B10")].any()


def test_nodata_windows_are_skipped(tmp_path):
    scene_dir = small_scene(tmp_path / "holes", zero_box=100)
    with open_scene(scene_dir) as scene:
        assert window_grid(scene, 64) == (3, 3) and window_grid(scene, 64, 32) == (5, 5)
        seen = {(w.row, w.col): (w, a) for w, a, _ in iter_windows(scene, 64)}
    fraction = {k: w.valid_fraction for k, (w, _) in seen.items()}
    assert fraction[(0, 0)] == 0.0
    assert fraction[(0, 1)] == fraction[(1, 0)] == pytest.approx(1 - 36 / 64)
    assert fraction[(1, 1)] == pytest.approx(1 - 36 * 36 / 64 ** 2)
    skipped = {k for k, (_, a) in seen.items() if a is None}
    assert skipped == {(0, 0), (0, 1), (1, 0)}
    assert seen[(1, 1)][1][:, :36, :36].max() == 0  # nodata pixels of a kept window are zeros


def test_index_fractions_on_a_constructed_window():
    array = np.zeros((13, 10, 10), dtype=np.uint16)
    array[band_index("B03")], array[band_index("B04")], array[band_index("B08")] = 500, 300, 3000  # vegetation
    array[band_index("B03"), :3], array[band_index("B08"), :3] = 1000, 200  # 30 water pixels (NDWI 0.67)
    array[band_index("B04"), 3:5] = 2500  # 20 pixels of bare soil: NDVI 0.09, NDWI < 0
    assert index_fractions(array) == pytest.approx({"water_fraction": 0.3, "vegetation_fraction": 0.5})
    valid = np.ones((10, 10), dtype=bool)
    valid[:2] = False  # 20 water pixels are nodata
    assert index_fractions(array, valid) == pytest.approx({"water_fraction": 10 / 80, "vegetation_fraction": 50 / 80})


@pytest.mark.parametrize("case", ["empty folder", "text file", "missing band", "crs", "no common extent",
                                  "unreadable", "too small", "two files"])
def test_bad_scenes_name_the_problem(case, tmp_path):
    if case == "empty folder":
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "notes.txt").write_text("hello")
        with pytest.raises(NotASceneError, match="not a Sentinel-2 scene"):
            open_scene(tmp_path / "x")
    elif case == "text file":
        (tmp_path / "x.csv").write_text("a,b")
        with pytest.raises(NotASceneError, match="not a Sentinel-2 scene"):
            open_scene(tmp_path / "x.csv")
    elif case == "missing band":
        with pytest.raises(MissingBandError, match=r"\['B04'\] are missing.*only B10 can be filled"):
            open_scene(small_scene(tmp_path / "s", [b for b in SSL4EO_BANDS if b != "B04"]))
    elif case == "crs":
        scene_dir = small_scene(tmp_path / "s")
        crop_band("B05", scene_dir / "B05.tif", crs="EPSG:32617")
        with pytest.raises(SceneGridError, match="different CRSs.*B05: EPSG:32617"):
            open_scene(scene_dir)
    elif case == "no common extent":
        scene_dir = small_scene(tmp_path / "s")
        crop_band("B05", scene_dir / "B05.tif", shift_m=50_000)
        with pytest.raises(SceneGridError, match="no common extent"):
            open_scene(scene_dir)
    elif case == "unreadable":
        scene_dir = small_scene(tmp_path / "s")
        (scene_dir / "B03.tif").write_bytes(b"II*\x00 truncated")
        with pytest.raises(CorruptFileError, match="B03.tif"):
            open_scene(scene_dir)
    elif case == "too small":
        with open_scene(small_scene(tmp_path / "s")) as scene, pytest.raises(
                SceneTooSmallError, match="smaller than one window of 256 x 256 px"):
            window_grid(scene, 256)
    elif case == "two files":
        scene_dir = small_scene(tmp_path / "s")
        shutil.copy(scene_dir / "B02.tif", scene_dir / "copy_B02.tif")
        with pytest.raises(NotASceneError, match="two files for band B02"):
            open_scene(scene_dir)


# --- mapping with small untrained towers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def encoders():
    import torch

    from mtmg.core.config import StudentConfig
    from mtmg.mapping.encoders import Prompts, SceneEncoders
    from mtmg.models.student import build_student

    from conftest import random_clip

    bundle = random_clip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        tiny = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
        student = build_student(StudentConfig(arch="vit_small_patch16_224", in_chans=13, overrides=tiny),
                                bundle.model.visual.output_dim)
    prompts = Prompts(("Forest", "SeaLake", "Residential"), ("forest", "lake or sea", "houses"), ("a photo of {c}.",))
    return SceneEncoders(bundle, {"student": student, "patched": bundle.model.visual}, prompts, window=64,
                         batch_size=4)


@pytest.fixture(scope="module")
def mapped(encoders, tmp_path_factory):
    from mtmg.mapping import scenemap

    scene_dir = small_scene(tmp_path_factory.mktemp("mapped") / "s", zero_box=100)
    emb = scenemap.classify(scenemap.embed_scene(scene_dir, encoders, progress=False), encoders)
    return emb


def test_the_map_has_one_pixel_per_window_in_the_scenes_crs(mapped, tmp_path):
    from mtmg.book.figures import class_colour
    from mtmg.mapping import outputs

    written = outputs.write_map(mapped, tmp_path, class_colour)
    assert {p.name for p in written} == {"student_classes.tif", "student_probs.tif", "patched_classes.tif",
                                          "patched_probs.tif", "windows.csv", "windows.geojson"}
    with rasterio.open(tmp_path / "student_classes.tif") as src:
        assert src.crs.to_epsg() == 32618 and (src.height, src.width) == (3, 3)
        assert src.transform == Affine(640, 0, 440850, 0, -640, 4174980)
        classes = src.read(1)
        assert src.nodata == 255 and json.loads(src.tags()["classes"]) == ["Forest", "SeaLake", "Residential"]
        assert src.colormap(1)[1][:3] == (0x17, 0xbe, 0xcf)  # SeaLake in the book's palette
    assert {(r, c) for r, c in zip(*np.nonzero(classes == 255))} == {(0, 0), (0, 1), (1, 0)}
    with rasterio.open(tmp_path / "student_probs.tif") as src:
        probs = src.read()
        assert src.dtypes[0] == "float32" and src.descriptions == ("Forest", "SeaLake", "Residential")
    assert np.isnan(probs[:, 0, 0]).all()
    np.testing.assert_allclose(np.nansum(probs, axis=0)[2, 2], 1.0, rtol=1e-5)
    assert (probs.argmax(axis=0)[1:, 1:] == classes[1:, 1:]).all()
    table = pd.read_csv(tmp_path / "windows.csv")
    assert list(table.columns) == ["row", "col", "x_min", "y_min", "x_max", "y_max", "lon", "lat", "valid_fraction",
                                   "student_class", "student_prob", "patched_class", "patched_prob"]
    assert len(table) == 9 and table["student_class"].isna().sum() == 3
    first = table.iloc[8]
    assert (first.x_min, first.y_max, first.x_max - first.x_min) == (440850 + 1280, 4174980 - 1280, 640)
    assert -76.0 < first.lon < -75.0 and 37.0 < first.lat < 38.0  # Virginia's Eastern Shore
    features = json.loads((tmp_path / "windows.geojson").read_text())["features"]
    assert len(features) == 9 and features[8]["properties"]["student_class"] == first.student_class
    lon = [p[0] for p in features[8]["geometry"]["coordinates"][0]]
    assert min(lon) < first.lon < max(lon)


def test_text_and_example_search_rank_windows_and_write_thumbnails(mapped, encoders, tmp_path):
    from mtmg.mapping import outputs, scenemap

    top = scenemap.search_text(mapped, encoders, "a tidal salt marsh", encoder="student", k=4)
    assert list(top["rank"]) == [1, 2, 3, 4] and top["score"].is_monotonic_decreasing
    assert not top["skipped"].any()
    same = scenemap.search_example(mapped, 2, 2, source="student", target="student", k=1)
    assert (same.loc[0, "row"], same.loc[0, "col"]) == (2, 2) and same.loc[0, "score"] == pytest.approx(1.0)
    across = scenemap.search_example(mapped, 2, 2, source="patched", target="student", k=6)
    assert len(across) == 6  # RGB query against MS windows: every kept window ranked
    with pytest.raises(ArgumentError, match="not a mapped window"):
        scenemap.search_example(mapped, 0, 0)
    written = outputs.write_search(mapped, top, tmp_path, outputs.slug("A tidal salt marsh!"))
    assert written[0].name == "a-tidal-salt-marsh.geojson"
    pngs = sorted((tmp_path / "a-tidal-salt-marsh").glob("*.png"))
    assert len(pngs) == 4 and pngs[0].name.startswith("rank01_")
    from PIL import Image

    assert Image.open(pngs[0]).size == (64, 64)


def test_index_check_counts_per_encoder(mapped):
    from mtmg.mapping import scenemap

    checks = scenemap.index_check(mapped)
    assert set(checks["encoder"]) == {"student", "patched"} and len(checks) == 4
    kept = mapped.kept
    water = kept[kept["water_fraction"] >= 0.8]
    row = checks[(checks["encoder"] == "student") & checks["check"].str.startswith("water")].iloc[0]
    assert row["windows"] == len(water)
    assert row["agree"] == int((water["student_class"] == "SeaLake").sum())

"""`python -m mtmg map` and `mtmg search`: the files they write (with small untrained encoders standing in for
the profile's trained ones) and every user error as one line with exit status 2."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine
from test_scene import crop_band, small_scene

from mtmg.cli import main
from mtmg.data.sentinel2 import SSL4EO_BANDS


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return small_scene(tmp_path_factory.mktemp("cli") / "scene")


@pytest.fixture
def tiny_encoders(monkeypatch):
    """``from_profile`` returns small untrained towers with the profile's prompts (no stage runs)."""
    import torch

    from mtmg.core.config import StudentConfig
    from mtmg.mapping import encoders as enc
    from mtmg.models.student import build_student

    from conftest import random_clip

    calls = []

    def fake(prof, names=enc.ENCODERS, prompts=None):
        calls.append((list(names), prompts))
        bundle = random_clip()
        towers = {}
        if "student" in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                tiny = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
                towers["student"] = build_student(StudentConfig(arch="vit_small_patch16_224", in_chans=13,
                                                                overrides=tiny), bundle.model.visual.output_dim)
        for name in ("patched", "zeroshot"):
            if name in names:
                towers[name] = bundle.model.visual
        return enc.SceneEncoders(bundle, towers, prompts or enc.task_prompts(prof.patch.task),
                                 enc.window_size(prof), batch_size=8)

    monkeypatch.setattr(enc, "from_profile", fake)
    return calls


def test_map_writes_the_maps_tables_and_geojson(scene_dir, tmp_path, tiny_encoders, capsys):
    out = tmp_path / "maps"
    assert main(["map", str(scene_dir), "--out", str(out), "--encoder", "student", "--stride", "32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["student_classes.tif", "student_probs.tif", "windows.csv",
                                                     "windows.geojson"]
    with rasterio.open(out / "student_classes.tif") as src:
        assert src.crs.to_epsg() == 32618 and src.transform == Affine(320, 0, 440850, 0, -320, 4174980)
        assert (src.height, src.width) == (5, 5)  # (192 - 64) / 32 + 1 windows a side
        assert len(json.loads(src.tags()["classes"])) == 10
    table = pd.read_csv(out / "windows.csv")
    assert len(table) == 25 and set(table["student_class"]) <= set(json.loads(
        rasterio.open(out / "student_classes.tif").tags()["classes"]))
    assert "25 of 25 windows mapped" in capsys.readouterr().out


def test_map_with_own_classes_and_prompt_file(scene_dir, tmp_path, tiny_encoders):
    assert main(["map", str(scene_dir), "--out", str(tmp_path / "a"), "--encoder", "patched",
                 "--classes", "forest, water ,town"]) == 0
    names, prompts = tiny_encoders[-1]
    assert names == ["patched"] and prompts.classes == ("forest", "water", "town")
    assert prompts.templates[0].startswith("a centered satellite photo of")  # the task's templates
    with rasterio.open(tmp_path / "a" / "patched_probs.tif") as src:
        assert src.descriptions == ("forest", "water", "town") and src.dtypes[0] == "float32"
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("# my prompts\na satellite image of a lake\n\nan aerial view of houses\n")
    assert main(["map", str(scene_dir), "--out", str(tmp_path / "b"), "--encoder", "student",
                 "--prompts", str(prompt_file)]) == 0
    assert tiny_encoders[-1][1].templates == ("{}",)
    assert tiny_encoders[-1][1].classes == ("a satellite image of a lake", "an aerial view of houses")


def test_search_writes_top_k_geojson_and_thumbnails(scene_dir, tmp_path, tiny_encoders, capsys):
    out = tmp_path / "search"
    assert main(["search", str(scene_dir), "a tidal salt marsh", "--k", "3", "--out", str(out)]) == 0
    features = json.loads((out / "a-tidal-salt-marsh.geojson").read_text())["features"]
    assert [f["properties"]["rank"] for f in features] == [1, 2, 3]
    assert len(list((out / "a-tidal-salt-marsh").glob("rank*.png"))) == 3
    assert tiny_encoders[-1][0] == ["student"]


def test_search_by_an_example_window_across_modalities(scene_dir, tmp_path, tiny_encoders, capsys):
    out = tmp_path / "like"
    assert main(["search", str(scene_dir), "--like", "1,2", "--like-encoder", "patched", "--k", "2",
                 "--out", str(out)]) == 0
    assert tiny_encoders[-1][0] == ["student", "patched"]
    features = json.loads((out / "like-patched-r1-c2-in-student.geojson").read_text())["features"]
    assert len(features) == 2
    assert main(["search", str(scene_dir), "--like", "9,9", "--out", str(out)]) == 2
    assert "window (9, 9) is not a mapped window" in capsys.readouterr().err


def _bad_scene(case, tmp_path):
    scene = tmp_path / "scene"
    if case == "not a scene":
        scene.mkdir()
        (scene / "readme.txt").write_text("no bands here")
    elif case == "missing band":
        small_scene(scene, [b for b in SSL4EO_BANDS if b != "B11"])
    elif case == "crs":
        small_scene(scene)
        crop_band("B11", scene / "B11.tif", crs="EPSG:32617")
    elif case == "extent":
        small_scene(scene)
        crop_band("B11", scene / "B11.tif", shift_m=100_000)
    elif case == "unreadable":
        small_scene(scene)
        (scene / "B08.tif").write_bytes(b"\x00" * 100)
    elif case == "too small":
        small_scene(scene, side_m=600)
    elif case == "no such path":
        return tmp_path / "nowhere"
    return scene


@pytest.mark.parametrize("case, message", [
    ("not a scene", "not a Sentinel-2 scene"),
    ("missing band", "bands ['B11'] are missing"),
    ("crs", "different CRSs"),
    ("extent", "no common extent"),
    ("unreadable", "B08.tif: cannot be read as a raster"),
    ("too small", "smaller than one window of 64 x 64 px"),
    ("no such path", "not found"),
])
@pytest.mark.parametrize("command", ["map", "search"])
def test_bad_scenes_are_one_line_errors(case, message, command, tmp_path, capsys, tiny_encoders):
    scene = _bad_scene(case, tmp_path)
    argv = [command, str(scene), *(["a lake"] if command == "search" else []), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtmg {command}: error: ") and message in err and err.count("\n") == 1, err
    assert not tiny_encoders  # refused before any model is loaded


@pytest.mark.parametrize("extra, message", [
    (["--classes", " , "], "--classes: the class list is empty"),
    (["--prompts", "EMPTY"], "the prompts file holds no prompt"),
    (["--prompts", "MISSING"], "cannot read the prompts file"),
    (["--stride", "0"], "--stride must be at least 1"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--bands", "B02,B03"], "a band order is for one multi-band GeoTIFF"),
])
def test_bad_map_arguments_are_one_line_errors(extra, message, scene_dir, tmp_path, capsys, tiny_encoders):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "file").write_text("x")
    swap = {"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "missing.txt"),
            "FILE": str(tmp_path / "file")}
    extra = [swap.get(a, a) for a in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "out")]
    assert main(["map", str(scene_dir), *out, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtmg map: error: ") and message in err and err.count("\n") == 1, err
    assert not tiny_encoders


@pytest.mark.parametrize("extra, message", [
    (["  ", "--k", "3"], "the query is empty"),
    (["a lake", "--k", "0"], "--k must be at least 1"),
    ([], "give either a QUERY text or --like ROW,COL"),
    (["a lake", "--like", "1,2"], "give either a QUERY text or --like ROW,COL"),
    (["--like", "one,two"], "expected ROW,COL of the window grid"),
])
def test_bad_search_arguments_are_one_line_errors(extra, message, scene_dir, tmp_path, capsys, tiny_encoders):
    assert main(["search", str(scene_dir), *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtmg search: error: ") and message in err and err.count("\n") == 1, err


def test_a_stacked_geotiff_without_descriptions_needs_bands(scene_dir, tmp_path, capsys, tiny_encoders):
    from mtmg.data.scene import open_scene

    with open_scene(scene_dir) as scene:
        array, _ = scene.read(0, 0, scene.height, scene.width)
        profile = {"driver": "GTiff", "height": scene.height, "width": scene.width, "count": 13, "dtype": "uint16",
                   "crs": scene.crs, "transform": scene.transform}
    stacked = tmp_path / "stack.tif"
    with rasterio.open(stacked, "w", **profile) as dst:
        dst.write(array)
    assert main(["map", str(stacked), "--out", str(tmp_path / "o"), "--encoder", "student"]) == 2
    assert "give the band order (command line: --bands" in capsys.readouterr().err
    assert main(["map", str(stacked), "--out", str(tmp_path / "o"), "--encoder", "student",
                 "--bands", ",".join(SSL4EO_BANDS)]) == 0

"""Learning check of the scene map, without labels: the default profile's trained student maps the shipped
Virginia scene (`data/s2_scene_virginia`), and spectral indices computed from the same bands, independently of
any model, say which windows are mostly water or mostly vegetation (see :func:`mtmg.mapping.scenemap.index_check`).

Measured with the default profile (seed 0, one thread; chapter 6 prints the same table): of the 148
mostly-water windows the student mapped 141 as River or SeaLake (95 %; patched CLIP 141, zero-shot CLIP 140);
of the 7 mostly-vegetation windows (a January scene) it mapped 3 as neither water nor built-up. A wrong band
order, a broken reader or an untrained student pulls the water rate towards the share a map without
information gives water classes (2 of 10 classes).
"""
import pytest

from mtmg.core.paths import DATA_DIR
from mtmg.mapping import encoders as scene_encoders
from mtmg.mapping import scenemap
from mtmg.runs import profiles

pytestmark = pytest.mark.learning

SCENE = DATA_DIR / "s2_scene_virginia"
WATER_WINDOWS = 148               # from the bands alone: the same on every run
MARGIN_WATER = 0.80               # student water rate (0.95 measured)
MIN_VEGETATION_AGREE = 1          # of the 7 vegetation windows (3 measured)


@pytest.fixture(scope="module")
def checks():
    prof = profiles.load_profile("default")
    encoders = scene_encoders.from_profile(prof, ("student",))
    emb = scenemap.classify(scenemap.embed_scene(SCENE, encoders, progress=False), encoders)
    return scenemap.index_check(emb).set_index("check")


def test_mostly_water_windows_are_mapped_as_water(checks):
    row = checks.loc["water windows predicted as water"]
    assert row["windows"] == WATER_WINDOWS
    assert row["rate"] >= MARGIN_WATER, row


def test_mostly_vegetation_windows_are_not_mapped_as_water_or_built_up(checks):
    row = checks.loc["vegetation windows not predicted as water or built-up"]
    assert row["windows"] == 7
    assert row["agree"] >= MIN_VEGETATION_AGREE, row

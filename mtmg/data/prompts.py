"""Class names and zero-shot prompt templates per dataset; names are listed in label order.

* ``eurosat``: CLIP_benchmark's class names and its three "a centered satellite photo of ..." templates.
* ``resisc45``: torchgeo's class folder names with ``_`` as spaces, and CLIP_benchmark's templates
  (kept verbatim, including its spelling "sattelite", so that zero-shot numbers are comparable).
* ``bigearthnet19/43/5`` and ``sen12ms``: their templates were never released with the paper. Our choice:
  the class names of each nomenclature in lower case, reworded only where a CORINE / IGBP term is not
  plain English (e.g. "urban fabric" -> "urban fabric or residential buildings", "complex cultivation
  patterns" -> "a patchwork of small mixed crop fields"), with three satellite-photo templates in the
  style of the EuroSAT ones (:data:`SATELLITE_TEMPLATES`). The multi-label head scores each class
  independently, so the templates describe a class being visible rather than the whole scene.
* ``folder``: generic templates for ImageNet-style folders that bring no templates of their own.

Use :func:`for_dataset` to get the names and templates of a dataset object: datasets that carry their
own (``folder``, ``shards``) take precedence over the tables.
"""
from __future__ import annotations

from typing import Any

EUROSAT_TEMPLATES = [
    "a centered satellite photo of {c}.",
    "a centered satellite photo of a {c}.",
    "a centered satellite photo of the {c}.",
]
SATELLITE_TEMPLATES = [
    "a satellite photo of {c}.",
    "a satellite image showing {c}.",
    "an aerial view of {c}.",
]

CLASSNAMES: dict[str, list[str]] = {
    "eurosat": [
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea",
    ],
    "resisc45": [
        "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral",
        "church", "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest",
        "freeway", "golf course", "ground track field", "harbor", "industrial area", "intersection",
        "island", "lake", "meadow", "medium residential", "mobile home park", "mountain", "overpass",
        "palace", "parking lot", "railway", "railway station", "rectangular farmland", "river",
        "roundabout", "runway", "sea ice", "ship", "snowberg", "sparse residential", "stadium",
        "storage tank", "tennis court", "terrace", "thermal power station", "wetland",
    ],
    "bigearthnet19": [
        "urban fabric or residential buildings", "industrial or commercial buildings", "arable land",
        "permanent crops such as vineyards or orchards", "pastures", "a patchwork of small mixed crop fields",
        "farmland with patches of natural vegetation", "agro-forestry areas", "broad-leaved forest",
        "coniferous forest", "mixed forest", "natural grassland or sparsely vegetated land",
        "moors, heathland or sclerophyllous vegetation", "transitional woodland or shrubland",
        "beaches, dunes or sands", "inland wetlands", "coastal wetlands", "inland waters", "sea or ocean",
    ],
    "bigearthnet43": [
        "continuous urban fabric", "discontinuous urban fabric", "industrial or commercial units",
        "road and rail networks", "port areas", "airports", "mineral extraction sites", "dump sites",
        "construction sites", "green urban areas", "sport and leisure facilities", "non-irrigated arable land",
        "permanently irrigated land", "rice fields", "vineyards", "fruit trees and berry plantations",
        "olive groves", "pastures", "annual crops mixed with permanent crops", "a patchwork of small mixed crop fields",
        "farmland with patches of natural vegetation", "agro-forestry areas", "broad-leaved forest",
        "coniferous forest", "mixed forest", "natural grassland", "moors and heathland",
        "sclerophyllous vegetation", "transitional woodland or shrubland", "beaches, dunes or sands",
        "bare rock", "sparsely vegetated areas", "burnt areas", "inland marshes", "peat bogs", "salt marshes",
        "salines", "intertidal flats", "rivers or water courses", "lakes or water bodies", "coastal lagoons",
        "estuaries", "sea or ocean",
    ],
    "bigearthnet5": [
        "artificial surfaces such as buildings or roads", "agricultural areas",
        "forest or semi-natural vegetation", "wetlands", "water bodies",
    ],
    "sen12ms": [
        "forest", "shrubland", "savanna", "grassland", "wetlands", "cropland", "urban or built-up area",
        "snow or ice", "barren land", "water",
    ],
}

TEMPLATES: dict[str, list[str]] = {
    "eurosat": EUROSAT_TEMPLATES,
    "resisc45": ["a sattelite image of {c}", "an aerial view of {c}", "a sattelite photo of {c}", "{c} from above"],
    "bigearthnet19": SATELLITE_TEMPLATES,
    "bigearthnet43": SATELLITE_TEMPLATES,
    "bigearthnet5": SATELLITE_TEMPLATES,
    "sen12ms": SATELLITE_TEMPLATES,
    "folder": ["a photo of a {c}.", "a photo of the {c}."],
}


def classnames(key: str) -> list[str]:
    """Readable class names of dataset ``key`` in label order."""
    if key not in CLASSNAMES:
        raise KeyError(f"no class names for {key!r}; known: {sorted(CLASSNAMES)}")
    return list(CLASSNAMES[key])


def templates(key: str) -> list[str]:
    """Zero-shot templates of dataset ``key`` (each has one ``{c}``)."""
    if key not in TEMPLATES:
        raise KeyError(f"no templates for {key!r}; known: {sorted(TEMPLATES)}")
    return list(TEMPLATES[key])


def for_dataset(dataset: Any) -> tuple[list[str], list[str]]:
    """(class names, templates) of a dataset: its own ``.classnames``/``.templates`` if it has them,
    else the tables under its ``.prompt_key``. Subsets forward these attributes."""
    names = getattr(dataset, "classnames", None) or classnames(dataset.prompt_key)
    temps = getattr(dataset, "templates", None) or templates(dataset.prompt_key)
    if len(names) != len(dataset.classes):
        raise ValueError(f"{len(names)} class names for {len(dataset.classes)} classes of {type(dataset).__name__}")
    return list(names), list(temps)

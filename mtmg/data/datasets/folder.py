"""RGB image class folders: RESISC45 and ImageNet-style ``folder`` datasets (items have no ``"ms"``).

``folder``: ``root/{train,val,test}/<class>/<image>`` with ``.jpg/.jpeg/.png/.bmp/.webp`` files. The class
list is the sorted union of class folders over all split folders present, so labels agree across splits.
Optional CLIP_benchmark files in ``root`` give the zero-shot prompts: ``classnames.txt`` (one readable
name per class, in label order) and ``zeroshot_classification_templates.txt`` (one ``{c}`` template per
line); without them the readable names are the folder names with ``_`` as spaces, and the templates are
``mtmg.data.prompts.TEMPLATES["folder"]``. The dataset carries them as ``.classnames`` and ``.templates``.

RESISC45 (torchgeo layout): ``root/NWPU-RESISC45/<class>/<class>_<nnn>.jpg`` (256 x 256) and the split
files ``root/resisc45-{train,val,test}.txt`` of torchgeo (one file name per line).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from mtmg.data.prompts import CLASSNAMES, TEMPLATES

from .base import OnError, Record, RGBDataset, Transform
from .errors import DatasetNotFoundError, LabelError, MissingFileError, ShapeError
from .layout import check_split, find_split_file, first_dir, read_lines, require_root, scan_class_folders
from .raster import read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESISC45_CLASSES: list[str] = [name.replace(" ", "_") for name in CLASSNAMES["resisc45"]]
RESISC45_HOWTO = ("Get it with torchgeo: torchgeo.datasets.RESISC45(root, split=..., download=True, "
                  "checksum=True) (or pass download=True here).")


class ImageFolderDataset(RGBDataset):
    """Single-label RGB images in class folders, optionally restricted to a list of file stems."""

    multilabel = False

    def __init__(self, image_dir: Path, classes: list[str], stems: set[str] | None, *,
                 rgb_transform: Transform, on_error: OnError, cache: bool,
                 size: tuple[int, int] | None = None) -> None:
        super().__init__(rgb_transform, on_error, cache)
        self.classes = list(classes)
        self.size = size
        found, problems = scan_class_folders(image_dir, self.classes, IMAGE_EXTENSIONS)
        if stems is None:
            stems = set(found)
        problems += [MissingFileError(image_dir / stem, "listed in the split file but not found in any class folder")
                     for stem in sorted(stems - set(found))]
        self._index([Record(stem, {"image": path}, label) for stem, (label, path) in found.items() if stem in stems],
                    problems)

    def _load(self, record: Record) -> Image.Image:
        image = read_image(record.files["image"])
        if self.size is not None and image.size != self.size:
            raise ShapeError(record.files["image"], f"is {image.size[0]}x{image.size[1]} px, "
                                                    f"expected {self.size[0]}x{self.size[1]}")
        return image


class RESISC45(ImageFolderDataset):
    """NWPU-RESISC45 scene classification (45 classes), torchgeo's split files."""

    prompt_key = "resisc45"

    def __init__(self, root: str | Path, split: str = "test", rgb_transform: Transform = None, *,
                 split_file: str | Path | None = None, on_error: OnError = "raise", cache: bool = False,
                 download: bool = False) -> None:
        check_split(split)
        root = Path(root)
        if download:
            from torchgeo.datasets import RESISC45 as _TGRESISC45  # imported here: only a download needs it

            _TGRESISC45(root=str(root), split=split, download=True, checksum=True)
        what = "RESISC45 class folders (NWPU-RESISC45/<class>/<class>_<nnn>.jpg)"
        root = require_root(root, what, RESISC45_HOWTO)
        image_dir = first_dir(root, ["NWPU-RESISC45"], what, RESISC45_HOWTO)
        split_path = find_split_file([Path(split_file) if split_file else None, root / f"resisc45-{split}.txt"],
                                     split, "RESISC45", RESISC45_HOWTO)
        stems = {Path(name).stem for name in read_lines(split_path)}
        super().__init__(image_dir, RESISC45_CLASSES, stems, rgb_transform=rgb_transform, on_error=on_error,
                         cache=cache, size=(256, 256))


class FolderDataset(ImageFolderDataset):
    """ImageNet-style ``root/<split>/<class>/<image>`` set with its own class names and templates."""

    prompt_key = "folder"

    def __init__(self, root: str | Path, split: str = "train", rgb_transform: Transform = None, *,
                 on_error: OnError = "raise", cache: bool = False) -> None:
        check_split(split)
        what = "split folders with class folders (root/train/<class>/<image>)"
        root = require_root(Path(root), what, "Write the images as root/<split>/<class>/<image>.")
        split_dir = first_dir(root, [split], what, "Write the images as root/<split>/<class>/<image>.")
        classes = sorted({p.name for s in ("train", "val", "test") if (root / s).is_dir()
                          for p in (root / s).iterdir() if p.is_dir() and not p.name.startswith((".", "_"))})
        if not classes:
            raise DatasetNotFoundError(f"{root} has split folders but no class folders inside them")
        super().__init__(split_dir, classes, None, rgb_transform=rgb_transform, on_error=on_error, cache=cache)
        names_file = root / "classnames.txt"
        self.classnames = read_lines(names_file) if names_file.is_file() else [c.replace("_", " ") for c in classes]
        if len(self.classnames) != len(classes):
            raise LabelError(names_file, f"has {len(self.classnames)} names for {len(classes)} class folders "
                                         f"{classes}; write one name per class in sorted folder order")
        templates_file = root / "zeroshot_classification_templates.txt"
        self.templates = read_lines(templates_file) if templates_file.is_file() else list(TEMPLATES["folder"])

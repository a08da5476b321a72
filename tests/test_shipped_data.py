"""The shipped real data are byte-identical to what their SHA256SUMS files record."""
import hashlib
from pathlib import Path

import pytest

from mtmg.core.paths import DATA_DIR

FOLDERS = ["eurosat_ms_sample", "eurosat_rgb_sample", "bigearthnet_sample", "miniclip"]


def _entries(folder: Path) -> list[tuple[str, str]]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines if line.strip()]


@pytest.mark.parametrize("name", FOLDERS)
def test_every_checksum_matches(name):
    folder = DATA_DIR / name
    entries = _entries(folder)
    assert entries, f"{folder / 'SHA256SUMS'} lists no files"
    for digest, rel in entries:
        rel = rel.lstrip("*").removeprefix("./")
        actual = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        assert actual == digest, f"{folder / rel}: SHA-256 {actual} differs from SHA256SUMS ({digest})"


@pytest.mark.parametrize("name", FOLDERS)
def test_every_file_is_covered(name):
    folder = DATA_DIR / name
    listed = {rel.lstrip("*").removeprefix("./") for _, rel in _entries(folder)}
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert present == listed, f"{folder}: files not in SHA256SUMS: {sorted(present - listed)}; " \
                              f"listed but missing: {sorted(listed - present)}"


def test_licences_shipped():
    assert (DATA_DIR / "eurosat_ms_sample" / "LICENSE-EuroSAT-MIT.txt").is_file()
    assert (DATA_DIR / "eurosat_rgb_sample" / "LICENSE-EuroSAT-MIT.txt").is_file()
    assert (DATA_DIR / "bigearthnet_sample" / "LICENSE-CDLA-Permissive-1.0.txt").is_file()

"""`python -m mtmg shard` on the shipped EuroSAT-MS sample: shards that read back as the same samples."""
import shutil

import pytest
import torch

from mtmg.cli import main
from mtmg.core.paths import DATA_DIR
from mtmg.data.datasets import get_dataset

ROOT = DATA_DIR / "eurosat_ms_sample"


def test_shard_command_writes_readable_shards(tmp_path, capsys):
    assert main(["shard", "--dataset", "eurosat_ms", "--root", str(ROOT), "--out", str(tmp_path),
                 "--split", "val", "--split", "test", "--samples-per-shard", "20"]) == 0
    assert "eurosat_ms/test: 50 samples" in capsys.readouterr().out
    assert (tmp_path / "test" / "nshards.txt").read_text().strip() == "3"
    assert not (tmp_path / "train").exists()
    source, shards = get_dataset("eurosat_ms", ROOT, "val"), get_dataset("shards", tmp_path, "val")
    assert len(shards) == len(source) == 50
    for i in (0, 17, 49):
        a, b = source[i], shards[i]
        assert a["id"] == b["id"] and a["target"] == b["target"] and torch.equal(a["ms"], b["ms"])


def test_shard_command_reports_a_missing_root(tmp_path, capsys):
    assert main(["shard", "--dataset", "eurosat_ms", "--root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_skip_bad_writes_the_list_of_bad_files_next_to_the_shards(tmp_path, capsys):
    root = tmp_path / "tiles"
    shutil.copytree(ROOT, root)
    split = tmp_path / "split.txt"
    names = (DATA_DIR / "splits" / "eurosat_ms_sample-val.txt").read_text().split()
    split.write_text("\n".join(names) + "\n")
    (root / "eurosat-val.txt").write_text(split.read_text())
    bad = root / "River" / next(n for n in names if n.startswith("River_"))
    bad.write_bytes(b"")
    out = tmp_path / "out"
    argv = ["shard", "--dataset", "eurosat_ms", "--root", str(root), "--out", str(out), "--split", "val"]
    assert main(argv) == 2
    assert f"{bad}: cannot be decoded" in capsys.readouterr().err
    assert not (out / "val").exists()
    with pytest.warns(UserWarning, match="skipped 1"):
        assert main([*argv, "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    listed = out / "val" / "skipped.tsv"
    assert f"eurosat_ms/val: 49 samples in {out / 'val'}" in printed
    assert f"left out 1 bad file(s), listed in {listed}" in printed
    rows = [line.split("\t") for line in listed.read_text().splitlines()]
    assert rows[0] == ["path", "reason"] and [r[0] for r in rows[1:]] == [str(bad)]
    assert len(get_dataset("shards", out, "val")) == 49


@pytest.mark.parametrize("extra, message", [
    (["--samples-per-shard", "0"], "--samples-per-shard must be at least 1, got 0"),
    (["--dataset", "eurosat_rgb"], "has no multispectral view"),
    (["--dataset", "eurosat"], "unknown dataset 'eurosat'"),
    (["--split", "val", "--out", "{file}"], "cannot write there"),
])
def test_shard_argument_errors_are_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "plain").write_text("")
    argv = ["shard", "--dataset", "eurosat_ms", "--root", str(ROOT), "--out", str(tmp_path / "out"), "--split", "val"]
    argv += [a.format(file=tmp_path / "plain") for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtmg shard: error: ") and message in err and err.count("\n") == 1, err

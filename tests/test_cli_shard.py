"""`python -m mtmg shard` on the shipped EuroSAT-MS sample: shards that read back as the same samples."""
import torch

from mtmg.cli import main
from mtmg.datasets import get_dataset
from mtmg.paths import DATA_DIR

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

"""`python -m mtmg`: every subcommand gets the one-line errors and the up-front argument checks."""
import pytest

from mtmg.cli import main
from mtmg.core.errors import ArgumentError
from mtmg.core.paths import PROJECT_ROOT

PATCH_CONFIG = PROJECT_ROOT / "configs" / "default" / "patch.yaml"


@pytest.mark.parametrize("argv, message", [
    (["patch", "--config", str(PATCH_CONFIG), "--device", "banana"], "--device banana: Unknown device"),
    (["align", "--config", "no/such/align.yaml", "--device", "cpu"], "no/such/align.yaml: config file not found"),
])
def test_training_stages_report_user_errors_in_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtmg {argv[0]}: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("train: {lr: fast}\n", "train.lr: expected a number, got 'fast'"),
    ("train: {learning_rate: 0.1}\n", "unknown key(s) ['learning_rate']"),
    ("train: [1, 2\n", "not valid YAML"),
])
def test_config_errors_are_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "patch.yaml"
    config.write_text(text)
    assert main(["patch", "--config", str(config), "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtmg patch: error: {config}") and message in err and err.count("\n") == 1, err


def test_debug_before_or_after_the_command_raises_the_error(tmp_path):
    argv = ["patch", "--config", str(PATCH_CONFIG), "--device", "banana"]
    with pytest.raises(ArgumentError, match="banana"):
        main(["--debug", *argv])
    with pytest.raises(ArgumentError, match="banana"):
        main([*argv, "--debug"])


def test_environment_variable_turns_on_debug(monkeypatch):
    monkeypatch.setenv("MTMG_DEBUG", "1")
    with pytest.raises(ArgumentError, match="--batch-size"):
        main(["zeroshot", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset", "eurosat_ms",
              "--root", ".", "--batch-size", "0"])
    monkeypatch.setenv("MTMG_DEBUG", "0")
    assert main(["zeroshot", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset", "eurosat_ms",
                 "--root", ".", "--batch-size", "0"]) == 2

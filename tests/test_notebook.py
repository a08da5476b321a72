"""Executing notebooks: executed copies only, atomic replacement, and one kernel with a fresh namespace
per notebook for a whole book."""
from __future__ import annotations

import nbformat
import pytest

from mtmg.book import notebook


def _write(path, *sources):
    cells = [nbformat.v4.new_code_cell("value = 0\nprofile = 'default'", metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _text(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_a_book_runs_in_one_kernel_and_every_notebook_starts_from_an_empty_namespace(tmp_path):
    first = _write(tmp_path / "a.ipynb", "import os\nleft_over = value\nprint('pid', os.getpid())")
    second = _write(tmp_path / "b.ipynb", "import os\nprint('pid', os.getpid())\n"
                                          "print('left_over' in dir(), value)")
    out = tmp_path / "out"
    done = notebook.execute_notebooks([(first, out / first.name), (second, out / second.name)], {"value": 7})
    assert done == [out / "a.ipynb", out / "b.ipynb"]
    pid_a, pid_b = (_text(p).splitlines()[0] for p in done)
    assert pid_a == pid_b  # one kernel
    assert _text(done[1]).splitlines()[1] == "False 7"  # the first notebook's variables are gone
    injected = [c for c in nbformat.read(done[1], as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and notebook.HIDDEN_TAG in injected[0].metadata["tags"]


def test_a_failing_notebook_keeps_the_previous_copy_and_stops_the_book(tmp_path):
    good = _write(tmp_path / "a.ipynb", "print('fine')")
    bad = _write(tmp_path / "b.ipynb", "raise RuntimeError('broken cell')")
    later = _write(tmp_path / "c.ipynb", "print('never')")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.ipynb").write_text("previous good copy")
    with pytest.raises(Exception, match="broken cell"):
        notebook.execute_notebooks([(p, out / p.name) for p in (good, bad, later)])
    assert (out / "a.ipynb").is_file()
    assert (out / "b.ipynb").read_text() == "previous good copy"
    assert (out / "b.failed.ipynb").is_file() and not (out / "c.ipynb").exists()
    assert "broken cell" in (out / "b.failed.ipynb").read_text()  # the failed copy shows the error


def test_a_notebook_is_never_executed_in_place(tmp_path):
    source = _write(tmp_path / "a.ipynb", "print(1)")
    with pytest.raises(ValueError, match="in place"):
        notebook.execute_notebook(source, source)


def test_the_command_line_takes_a_pair_or_a_folder(tmp_path, capsys):
    source = _write(tmp_path / "a.ipynb", "print(value)")
    assert notebook.main([str(source), str(tmp_path / "x.ipynb"), "-p", "value", "3"]) == 0
    assert _text(tmp_path / "x.ipynb").strip() == "3"
    assert notebook.main(["--into", str(tmp_path / "book"), str(source)]) == 0
    assert (tmp_path / "book" / "a.ipynb").is_file()
    with pytest.raises(SystemExit):
        notebook.main([str(source)])  # a source without a destination or --into


# --- papermill's conventions -------------------------------------------------------------------------------

def _chapter_like(path, *sources):
    """A notebook shaped like a chapter: a typed parameters cell, then the set-up cell's first call."""
    cells = [nbformat.v4.new_code_cell('value: int = 0  # a number\noverrides: "Union[dict, str]" = {}',
                                       metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("from mtmg.book.notebook import use_parameters\nuse_parameters(globals())")]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parse_overrides_takes_a_mapping_or_a_json_or_yaml_string():
    from mtmg.core.errors import ConfigError

    assert notebook.parse_overrides({"patch.train.seed": 1}) == {"patch.train.seed": 1}
    assert notebook.parse_overrides('{"patch.train.seed": 1}') == {"patch.train.seed": 1}
    assert notebook.parse_overrides("align.cls_weight: 0.0") == {"align.cls_weight": 0.0}
    assert notebook.parse_overrides("") == {} and notebook.parse_overrides(None) == {}
    with pytest.raises(ConfigError, match="mapping"):
        notebook.parse_overrides("[1, 2]")
    with pytest.raises(ConfigError, match="must be JSON or YAML"):
        notebook.parse_overrides('{"a": 1')


def test_a_misspelt_parameter_is_refused_with_the_valid_names_before_anything_runs(tmp_path):
    from mtmg.core.errors import ConfigError

    source = _chapter_like(tmp_path / "a.ipynb", "open('ran', 'w').close()")
    with pytest.raises(ConfigError, match="unknown parameter valeu; the valid names are overrides, value"):
        notebook.execute_notebook(source, tmp_path / "out" / "a.ipynb", {"valeu": 1})
    assert not (tmp_path / "out").exists() and not (tmp_path / "ran").exists()
    assert notebook.main([str(source), str(tmp_path / "x.ipynb"), "-p", "valeu", "1"]) == 2


def test_papermill_runs_get_checked_names_parsed_overrides_one_line_errors_and_no_progress_bars(tmp_path):
    """Through papermill itself (not this module's runner): what `papermill -p ...` does."""
    import papermill

    run = _chapter_like(tmp_path / "a.ipynb",
                        "print(type(overrides).__name__, overrides)",
                        "from tqdm import tqdm\nfor _ in tqdm(range(200), mininterval=0, disable=False): pass",
                        "from mtmg.core.errors import ConfigError\nraise ConfigError('x.yaml: lr: expected > 0')")
    out = tmp_path / "run.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(run), str(out), parameters={"overrides": '{"patch.train.seed": 1}'},
                                   progress_bar=False, cwd=str(tmp_path))
    assert failure.value.traceback == ["ConfigError: x.yaml: lr: expected > 0"]  # one line, no traceback
    cells = nbformat.read(out, as_version=4).cells
    assert _text(out).splitlines()[0] == "dict {'patch.train.seed': 1}"
    bar = next(c for c in cells if "tqdm(range" in c.source)
    assert bar.outputs == []  # the progress bar wrote nothing

    misspelt = _chapter_like(tmp_path / "b.ipynb", "open('ran', 'w').close()")
    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter valeu") as refused:
        papermill.execute_notebook(str(misspelt), str(tmp_path / "b_run.ipynb"), parameters={"valeu": 1},
                                   progress_bar=False, cwd=str(tmp_path))
    assert len(refused.value.traceback) == 1 and "the valid names are overrides, value" in refused.value.traceback[0]
    assert not (tmp_path / "ran").exists()


def test_an_alias_bomb_in_overrides_is_refused_quickly():
    import time

    from mtmg.book.notebook import parse_overrides
    from mtmg.core.errors import ConfigError

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="overrides"):
        parse_overrides(bomb)
    assert time.perf_counter() - started < 5

"""Executing notebooks: executed copies only, atomic replacement, and one kernel with a fresh namespace
per notebook for a whole book."""
from __future__ import annotations

import nbformat
import pytest

from mtmg.book import notebook


def _write(path, *sources):
    cells = [nbformat.v4.new_code_cell("value = 0", metadata={"tags": ["parameters"]})]
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

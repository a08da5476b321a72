"""Execute book notebooks with papermill into executed copies, never in place.

Each notebook runs into a temporary file next to its destination, which replaces the destination only
when every cell succeeded: a failing run leaves the previous good copy untouched and exits non-zero.

    python -m mtmg.book.notebook notebooks/01_distribution_shift.ipynb \
        book/executed/01_distribution_shift.ipynb --profile default

    python -m mtmg.book.notebook --into book/executed notebooks/*.ipynb --profile default

The second form (``make notebooks``) runs the notebooks one after the other in one Python kernel,
each from an empty namespace (IPython's ``%reset -f``), so torch, open_clip and the rest are imported
once for the whole book instead of once per notebook; it stops at the first notebook that fails.

Inside a notebook, :func:`use_parameters` (the first call of the set-up cell) applies papermill's
conventions: injected names that the parameters cell does not declare are refused with the valid ones,
``overrides`` may be a mapping or a JSON/YAML string (``papermill -p overrides '{"patch.train.seed": 1}'``),
a configuration error shows as its one line, and progress bars are off when papermill runs the notebook.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

from mtmg.core.config import parse_yaml
from mtmg.core.errors import ConfigError, UserError

#: The first line of the cell papermill injects after the parameters cell.
INJECTED_HEADER = "# Parameters"


def execute_notebook(source: Path, destination: Path, parameters: dict | None = None,
                     kernel_name: str = "python3", kernel_manager: Any = None) -> Path:
    """Run ``source`` with ``parameters`` and write the executed copy to ``destination`` atomically.

    ``kernel_manager``: a started ``jupyter_client`` kernel manager to run in (it is left running);
    None starts a kernel for this notebook alone and shuts it down afterwards."""
    import papermill  # imported here: papermill and jupyter take seconds, and each chapter's kernel imports this module

    source, destination = Path(source).resolve(), Path(destination).resolve()
    if source == destination:
        raise ValueError(f"{source}: refusing to execute a notebook in place; give another destination")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook not found")
    check_parameter_names(source, parameters or {})
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.stem}.partial.ipynb")
    engine = {"km": kernel_manager} if kernel_manager is not None else {}
    try:
        papermill.execute_notebook(
            str(source), str(partial), parameters=parameters or {}, kernel_name=kernel_name,
            cwd=str(source.parent), progress_bar=False, log_output=False,
            shutdown_kernel="immediate",  # every output has arrived; a graceful shutdown only waits
            request_save_on_cell_execute=False,  # written once at the end (or at the failing cell), not twice
                                                 # per cell with every figure: seconds per book
            **engine,
        )
    except BaseException:
        failed = destination.with_name(f"{destination.stem}.failed.ipynb")
        if partial.exists():
            os.replace(partial, failed)
            print(f"notebook failed; its partial output is in {failed}; "
                  f"{destination.name} was left as it was", file=sys.stderr)
        raise
    hide_injected_parameters(partial)
    os.replace(partial, destination)
    return destination


def execute_notebooks(jobs: Sequence[tuple[Path, Path]], parameters: dict | None = None,
                      kernel_name: str = "python3") -> list[Path]:
    """Run each ``(source, destination)`` of ``jobs`` in order, as :func:`execute_notebook` does, in one
    kernel whose namespace is emptied before every notebook. Stops at the first failure (raised)."""
    from jupyter_client.manager import KernelManager  # imported here: as papermill, above

    if not jobs:
        return []
    for source, _ in jobs:  # a misspelt parameter fails here, before any notebook runs
        check_parameter_names(Path(source), parameters or {})
    manager = KernelManager(kernel_name=kernel_name)
    manager.start_kernel(cwd=str(Path(jobs[0][0]).resolve().parent))
    try:
        done = []
        for i, (source, destination) in enumerate(jobs):
            if i:
                _reset_namespace(manager)
            done.append(execute_notebook(source, destination, parameters, kernel_name, kernel_manager=manager))
        return done
    finally:
        manager.shutdown_kernel(now=True)


def _reset_namespace(manager: Any, timeout: float = 60.0) -> None:
    """Delete every variable of the kernel's namespace and close its figures (imported modules stay)."""
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=timeout)
        reply = client.execute_interactive("%reset -f\nimport matplotlib.pyplot as _plt\n_plt.close('all')\n"
                                           "del _plt", timeout=timeout, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"resetting the kernel between notebooks failed: {reply['content']}")
    finally:
        client.stop_channels()


HIDDEN_TAG = "remove-cell"


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell`` so the book does not render it (the
    executed notebook keeps it, so a reader who downloads it sees the parameters it ran with)."""

    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and HIDDEN_TAG not in tags:
            tags.append(HIDDEN_TAG)
            changed = True
    if changed:
        nbformat.write(nb, str(path))


# --- papermill's conventions inside a notebook ----------------------------------------------------------

def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at its top level (``x = ...`` and ``x: T = ...``), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def _unknown_names_error(unknown: Sequence[str], declared: Sequence[str], where: str) -> ConfigError:
    return ConfigError(f"{where}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                       f"the valid names are {', '.join(sorted(declared))} "
                       "(`papermill --help-notebook NOTEBOOK` lists them with their types)")


def check_parameter_names(source: Path, parameters: dict) -> None:
    """Refuse ``parameters`` that the parameters cell of the notebook ``source`` does not declare."""

    nb = nbformat.read(str(source), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return  # papermill adds the parameters at the top; nothing is declared to check against
    declared = assigned_names(cell.source)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise _unknown_names_error(unknown, declared, str(source))


def parse_overrides(value: Any) -> dict:
    """``overrides`` as a mapping: a mapping is kept, a JSON or YAML string (as ``papermill -p`` passes it)
    is parsed, None or an empty string is ``{}``."""

    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = parse_yaml(value, "overrides")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (overrides must be JSON or YAML); write a mapping such as "
                              "'{\"patch.train.seed\": 1}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"overrides: expected a mapping of dotted keys such as {{\"patch.train.seed\": 1}}, "
                          f"got {value!r}")
    return dict(value)


def _injected_names(history: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``(injected, declared)``: the names of papermill's last injected cell in the input ``history`` and of
    the cell run just before it (the parameters cell); None when papermill injected nothing."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith(INJECTED_HEADER):
            return assigned_names(history[i]), assigned_names(history[i - 1])
    return None


def run_by_papermill() -> bool:
    """Whether this kernel was started by papermill (or by this module), not by an interactive front end."""
    try:
        import psutil  # imported here: an optional dependency of jupyter, absent outside a kernel

        parent = psutil.Process(os.getppid()).cmdline()
    except Exception:  # psutil missing or the parent gone: treat the session as interactive
        return False
    return any("papermill" in part or "mtmg.book.notebook" in part for part in parent)


def disable_progress_bars() -> None:
    """Turn every tqdm progress bar off in this process (a notebook run by papermill would keep every
    update of every bar in its outputs)."""
    from tqdm import std  # imported here: only a notebook run by papermill needs it

    if getattr(std.tqdm.__init__, "_mtmg_quiet", False):
        return
    original = std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    quiet_init._mtmg_quiet = True
    std.tqdm.__init__ = quiet_init


def _one_line(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython's handler of :class:`UserError`: the error as its one line, without the traceback."""
    line = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, line)  # IPython's hook that sends an error to the front end
    return line


def use_parameters(namespace: dict) -> None:
    """Apply papermill's conventions to a notebook's ``namespace`` (call it as ``use_parameters(globals())``
    at the top of the cell after the parameters cell): refuse injected parameter names the parameters cell
    does not declare, turn ``overrides`` into a mapping, show errors the user can fix as their one line, and
    turn progress bars off when papermill runs the notebook. Raises :class:`ConfigError` before anything
    is written."""
    try:
        from IPython import get_ipython  # imported here: only a notebook kernel has IPython
    except ImportError:
        get_ipython = None
    shell = get_ipython() if get_ipython is not None else None
    if shell is not None:
        shell.set_custom_exc((UserError,), _one_line)
    found = _injected_names(list(namespace.get("In", [])))
    if found is not None or run_by_papermill():
        disable_progress_bars()
    if found is not None:
        injected, declared = found
        unknown = sorted(set(injected) - set(declared))
        if declared and unknown:
            raise _unknown_names_error(unknown, declared, "papermill parameters")
    if "overrides" in namespace:
        namespace["overrides"] = parse_overrides(namespace["overrides"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtmg.book.notebook", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, nargs="+", metavar="NOTEBOOK",
                        help="SOURCE DESTINATION, or with --into one or more sources")
    parser.add_argument("--into", type=Path, default=None, metavar="DIR",
                        help="write each executed copy to DIR/<name>, all notebooks in one kernel")
    parser.add_argument("--profile", default="default", help="papermill parameter 'profile' (default or paper)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra papermill parameter (value parsed as YAML)")
    args = parser.parse_args(argv)

    if args.into is None and len(args.notebooks) != 2:
        parser.error("give SOURCE DESTINATION, or --into DIR and the sources")
    jobs = ([(src, args.into / src.name) for src in args.notebooks] if args.into is not None
            else [tuple(args.notebooks)])
    params = {"profile": args.profile}
    params.update({name: parse_yaml(value, f"-p {name}") for name, value in args.parameter})
    done: list[Path] = []
    try:
        if args.into is None:
            done.append(execute_notebook(*jobs[0], params))
        else:
            done = execute_notebooks(jobs, params)
    except UserError as exc:  # a parameter the notebooks do not declare: nothing was run
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill raises PapermillExecutionError with the failing cell
        print(f"error: a notebook failed: {exc}", file=sys.stderr)
        return 1
    for (source, _), destination in zip(jobs, done):
        print(f"executed {source} -> {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Execute book notebooks with papermill into executed copies, never in place.

Each notebook runs into a temporary file next to its destination, which replaces the destination only
when every cell succeeded: a failing run leaves the previous good copy untouched and exits non-zero.

    python -m mtmg.book.notebook notebooks/01_distribution_shift.ipynb \
        book/executed/01_distribution_shift.ipynb --profile default

    python -m mtmg.book.notebook --into book/executed notebooks/*.ipynb --profile default

The second form (``make notebooks``) runs the notebooks one after the other in one Python kernel,
each from an empty namespace (IPython's ``%reset -f``), so torch, open_clip and the rest are imported
once for the whole book instead of once per notebook; it stops at the first notebook that fails.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def execute_notebook(source: Path, destination: Path, parameters: dict | None = None,
                     kernel_name: str = "python3", kernel_manager: Any = None) -> Path:
    """Run ``source`` with ``parameters`` and write the executed copy to ``destination`` atomically.

    ``kernel_manager``: a started ``jupyter_client`` kernel manager to run in (it is left running);
    None starts a kernel for this notebook alone and shuts it down afterwards."""
    import papermill

    source, destination = Path(source).resolve(), Path(destination).resolve()
    if source == destination:
        raise ValueError(f"{source}: refusing to execute a notebook in place; give another destination")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook not found")
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
    from jupyter_client.manager import KernelManager

    if not jobs:
        return []
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
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and HIDDEN_TAG not in tags:
            tags.append(HIDDEN_TAG)
            changed = True
    if changed:
        nbformat.write(nb, str(path))


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
    import yaml

    if args.into is None and len(args.notebooks) != 2:
        parser.error("give SOURCE DESTINATION, or --into DIR and the sources")
    jobs = ([(src, args.into / src.name) for src in args.notebooks] if args.into is not None
            else [tuple(args.notebooks)])
    params = {"profile": args.profile}
    params.update({name: yaml.safe_load(value) for name, value in args.parameter})
    done: list[Path] = []
    try:
        if args.into is None:
            done.append(execute_notebook(*jobs[0], params))
        else:
            done = execute_notebooks(jobs, params)
    except Exception as exc:  # papermill raises PapermillExecutionError with the failing cell
        print(f"error: a notebook failed: {exc}", file=sys.stderr)
        return 1
    for (source, _), destination in zip(jobs, done):
        print(f"executed {source} -> {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

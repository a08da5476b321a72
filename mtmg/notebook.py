"""Execute a book notebook with papermill into an executed copy, never in place.

The notebook runs into a temporary file next to the destination, which replaces the destination only
when every cell succeeded: a failing run leaves the previous good copy untouched and exits non-zero.

    python -m mtmg.notebook notebooks/01_distribution_shift.ipynb \
        book/executed/01_distribution_shift.ipynb --profile default
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def execute_notebook(source: Path, destination: Path, parameters: dict | None = None,
                     kernel_name: str = "python3") -> Path:
    """Run ``source`` with ``parameters`` and write the executed copy to ``destination`` atomically."""
    import papermill

    source, destination = Path(source).resolve(), Path(destination).resolve()
    if source == destination:
        raise ValueError(f"{source}: refusing to execute a notebook in place; give another destination")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook not found")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.stem}.partial.ipynb")
    try:
        papermill.execute_notebook(
            str(source), str(partial), parameters=parameters or {}, kernel_name=kernel_name,
            cwd=str(source.parent), progress_bar=False, log_output=False,
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
    parser = argparse.ArgumentParser(prog="python -m mtmg.notebook", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--profile", default="default", help="papermill parameter 'profile' (default or paper)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra papermill parameter (value parsed as YAML)")
    args = parser.parse_args(argv)
    import yaml

    params = {"profile": args.profile}
    params.update({name: yaml.safe_load(value) for name, value in args.parameter})
    try:
        execute_notebook(args.source, args.destination, params)
    except Exception as exc:  # papermill raises PapermillExecutionError with the failing cell
        print(f"error: {args.source} failed: {exc}", file=sys.stderr)
        return 1
    print(f"executed {args.source} -> {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The workshop without make or bash: one Python script for Windows, macOS and Linux.

    python workshop.py setup              create .venv and install (CPU builds of torch)
    python workshop.py setup --offline D  install from a wheelhouse folder D, without network
    python workshop.py wheelhouse D       download every wheel the install needs into D (for a USB stick)
    python workshop.py warmup             run chapters 1-6 once, so the exercises start from finished runs
    python workshop.py lab                open the notebooks in JupyterLab
    python workshop.py handout            write the printable handout and the facilitator notes to _build/
    python workshop.py reset              restore the notebooks and remove the exercises' runs

Only the standard library is used here; everything else runs with the virtual environment's Python.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
#: torch's CPU builds: a laptop has no use for the CUDA libraries (gigabytes) that PyPI's Linux wheels pull in.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"
SOLUTIONS = "07_exercise_solutions.ipynb"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command: str | Path, env: dict | None = None) -> None:
    """Run a command in the project folder; stop with its status when it fails."""
    print("+", " ".join(str(c) for c in command), flush=True)
    status = subprocess.call([str(c) for c in command], cwd=ROOT, env={**os.environ, **(env or {})})
    if status:
        sys.exit(f"workshop: error: the command above failed with status {status}")


def need_venv() -> Path:
    python = venv_python()
    if not python.is_file():
        sys.exit("workshop: error: no .venv here; run `python workshop.py setup` first")
    return python


def index_options(cuda: bool) -> list[str]:
    """pip's index options: CPU builds of torch unless ``cuda`` (macOS and Windows wheels are CPU builds)."""
    return [] if cuda or platform.system() != "Linux" else ["--index-url", CPU_INDEX, "--extra-index-url", PYPI]


def setup(args: argparse.Namespace) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 (this script runs on the system's Python, not the venv's)
        sys.exit(f"workshop: error: Python {platform.python_version()} is too old; install Python 3.10 or newer")
    if not venv_python().is_file():
        run(sys.executable, "-m", "venv", VENV)
    python = venv_python()
    source = (["--no-index", "--find-links", str(Path(args.offline).resolve())] if args.offline
              else index_options(args.cuda))
    if not args.offline:
        run(python, "-m", "pip", "install", "--upgrade", "--quiet", "pip")
    run(python, "-m", "pip", "install", "--quiet", *source, "-r", "requirements.txt")
    # numba compiles umap's functions on first use; pay that here rather than in chapter 4 (as make install does)
    run(python, "-c", "from mtmg.evaluation.gap import compile_umap; compile_umap()")
    print("workshop: installed; next: python workshop.py warmup")


def wheelhouse(args: argparse.Namespace) -> None:
    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    python = need_venv()  # pip of the environment the wheels are for (same Python version and platform)
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-"))]
    # the pinned packages, the project's dependencies (".[dev]") and what pip needs to install the project itself
    run(python, "-m", "pip", "download", "--quiet", "--dest", folder, *index_options(args.cuda),
        *pins, ".[dev]", "setuptools>=68", "wheel")
    run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", folder, ".")
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"workshop: {len(list(folder.iterdir()))} files, {size:.0f} MiB in {folder}; on a laptop with the same "
          f"Python and system: python workshop.py setup --offline {folder}")


def notebooks(pattern: str) -> list[str]:
    return [str(p) for p in sorted((ROOT / "notebooks").glob(pattern)) if p.name != SOLUTIONS]


def warmup(args: argparse.Namespace) -> None:
    python = need_venv()
    started = time.perf_counter()
    run(python, "-m", "mtmg.book.notebook", "--into", "book/executed", *notebooks("0[1-6]_*.ipynb"),
        "--profile", "default", env={"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
    print(f"workshop: warm-up done in {(time.perf_counter() - started) / 60:.1f} min; next: python workshop.py lab")


def lab(args: argparse.Namespace) -> None:
    need_venv()
    jupyter = VENV / ("Scripts/jupyter.exe" if os.name == "nt" else "bin/jupyter")
    as_root = ["--allow-root"] if hasattr(os, "getuid") and os.getuid() == 0 else []
    run(jupyter, "lab", "notebooks/", *as_root, *args.lab_args, env={"HF_HUB_OFFLINE": "1"})


def handout(args: argparse.Namespace) -> None:
    run(need_venv(), "-m", "mtmg.book.handout", "--into", "_build")


def reset(args: argparse.Namespace) -> None:
    python = need_venv()
    if shutil.which("git") and (ROOT / ".git").exists():
        run("git", "checkout", "--", "notebooks/")
    else:
        print("workshop: git not found: copy notebooks/ again from the workshop's archive to undo your edits")
    run(python, "-m", "mtmg", "runs", "clean")  # keeps the warm-up's runs, removes every other parameter set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python workshop.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:10]))
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser("setup", help="create .venv and install")
    p.add_argument("--offline", metavar="WHEELHOUSE", help="install from this folder only (pip --no-index)")
    p.add_argument("--cuda", action="store_true", help="Linux: PyPI's torch with its CUDA libraries (gigabytes)")
    p.set_defaults(func=setup)
    p = sub.add_parser("wheelhouse", help="download the wheels for an offline install")
    p.add_argument("folder")
    p.add_argument("--cuda", action="store_true", help="Linux: PyPI's torch with its CUDA libraries")
    p.set_defaults(func=wheelhouse)
    sub.add_parser("warmup", help="run chapters 1-6 (not the solutions)").set_defaults(func=warmup)
    p = sub.add_parser("lab", help="open the notebooks in JupyterLab")
    p.add_argument("lab_args", nargs=argparse.REMAINDER, help="passed to jupyter lab (e.g. --port 8890)")
    p.set_defaults(func=lab)
    sub.add_parser("handout", help="write the handout and facilitator notes").set_defaults(func=handout)
    sub.add_parser("reset", help="restore the notebooks, remove the exercises' runs").set_defaults(func=reset)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""Command line: ``python -m mtmg <command> ...``; one module per subcommand, each with an
``add_parser`` and a ``run`` function.

An error the user can fix (a bad argument, config, dataset or weight file: :class:`mtmg.core.errors.UserError`,
and files that cannot be found or written) is printed as one line ``mtmg <command>: error: ...`` and the
exit status is 2; ``--debug`` (or ``MTMG_DEBUG=1``) shows the full traceback instead. ``--device``,
``--batch-size`` and ``--workers`` of any subcommand are checked before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mtmg import __version__
from mtmg.cli import probe, results, runs, scene, shard, stages, zeroshot
from mtmg.cli.checks import check_common_arguments
from mtmg.core.errors import STORAGE_FIXES, UserError

DEBUG_ENV = "MTMG_DEBUG"
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtmg", description="Mind the Modality Gap: zero-shot evaluation, CLIP patching and MS alignment.")
    parser.add_argument("--version", action="version", version=f"mtmg {__version__}")
    debug_help = f"show the full traceback of an error (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    zeroshot.add_parser(subparsers)
    stages.add_patch_parser(subparsers)
    stages.add_align_parser(subparsers)
    shard.add_parser(subparsers)
    runs.add_parser(subparsers)
    probe.add_parser(subparsers)
    results.add_parser(subparsers)
    scene.add_parsers(subparsers)
    for sub in subparsers.choices.values():  # also accepted after the command name
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def debug_enabled(args: argparse.Namespace) -> bool:
    """``--debug`` given, or ``MTMG_DEBUG`` set to anything but empty, 0, false or no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def is_user_error(error: BaseException) -> bool:
    """Errors the user causes and can fix: :class:`UserError`, files that are missing or cannot be written,
    a full disk, a read-only file system, a name too long (:data:`mtmg.core.errors.STORAGE_FIXES`)."""
    return isinstance(error, (UserError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) \
        or (isinstance(error, OSError) and error.errno in STORAGE_FIXES)


def user_message(error: BaseException) -> str:
    """One line for the user: the error's own message (an OS error: its file and reason; an error re-raised
    by a DataLoader worker: the last line of the worker's traceback, without the class name)."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror is not None:
        fix = STORAGE_FIXES.get(error.errno)
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"{where}{error.strerror}" + (f"; {fix}" if fix else "")
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].partition(": ")[2]
    return " ".join(text.split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        check_common_arguments(args)
        return args.func(args)
    except KeyboardInterrupt:
        if debug_enabled(args):
            raise
        print(f"mtmg {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Exception as e:
        if debug_enabled(args) or not is_user_error(e):
            raise
        print(f"mtmg {args.command}: error: {user_message(e)}", file=sys.stderr)
        return USER_ERROR_STATUS

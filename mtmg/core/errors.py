"""Errors a user can cause and fix: each message says what is wrong, where, and how to fix it.

The command line prints such an error as one line and exits with status 2 (a traceback only with
``--debug`` or ``MTMG_DEBUG=1``). The classes are mixins, so a dataset error can at the same time be a
``ValueError`` or a ``FileNotFoundError`` for code that catches the built-in types.
"""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the user's input (arguments, config, data or weight files), not a bug."""


class ArgumentError(UserError, ValueError):
    """A command-line argument or function argument with an invalid value."""


class ConfigError(UserError, ValueError):
    """A config file or config value that cannot be used."""


class DataError(UserError):
    """A dataset, one of its files, or a shard that cannot be read."""


class WeightsError(UserError):
    """A weight file or checkpoint that is missing, empty, truncated or not a state dict."""


class ConfigKeyError(ConfigError, KeyError):
    """A config key that the config class does not define."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


STORAGE_FIXES = {
    errno.ENOSPC: "free space on that disk, or move the run store and caches elsewhere (MTMG_RUNS, MTMG_CACHE)",
    errno.EDQUOT: "free space within your quota, or move the run store and caches elsewhere (MTMG_RUNS, MTMG_CACHE)",
    errno.EROFS: "the file system is read-only: point MTMG_RUNS / MTMG_CACHE (or --out) at a writable folder",
    errno.EACCES: "fix the folder's permissions, or point MTMG_RUNS / MTMG_CACHE (or --out) at a writable folder",
    errno.EPERM: "fix the folder's permissions, or point MTMG_RUNS / MTMG_CACHE (or --out) at a writable folder",
    errno.ENAMETOOLONG: "choose a shorter file or folder name",
}
"""What to do about each file-system error a user can fix (``errno`` -> advice)."""


class StorageError(UserError, OSError):
    """A file that cannot be written: no space left, a read-only or protected folder, a name too long."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def storage_error(error: BaseException, path: object) -> StorageError | None:
    """The :class:`StorageError` for writing ``path`` that ``error``, or an error it arose from (torch's writer
    turns ``ENOSPC`` into a ``RuntimeError``), stands for; None if it is no such error."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_FIXES:
            reason = seen.strerror or os.strerror(seen.errno)
            return StorageError(seen.errno, f"{reason}; {STORAGE_FIXES[seen.errno]}", str(path))
        seen = seen.__cause__ or seen.__context__
    return None

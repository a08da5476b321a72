"""Errors a user can cause and fix: each message says what is wrong, where, and how to fix it.

The command line prints such an error as one line and exits with status 2 (a traceback only with
``--debug`` or ``MTMG_DEBUG=1``). The classes are mixins, so a dataset error can at the same time be a
``ValueError`` or a ``FileNotFoundError`` for code that catches the built-in types.
"""
from __future__ import annotations


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

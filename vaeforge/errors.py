"""User-facing errors: one clear line, a non-zero exit, no traceback."""
from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class VaeforgeError(Exception):
    """An error caused by the user's input (config, data, files); printed as one line."""


class ConfigError(VaeforgeError):
    """Unknown recipe, key or plugin; a value of the wrong type."""


class DataError(VaeforgeError):
    """A corrupt or missing archive, shard, image or label file; the message names the file."""


class CheckpointError(VaeforgeError):
    """A missing, damaged or mismatching checkpoint."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``"valid: a, b, c; did you mean 'x'?"`` for an unknown ``name``."""
    choices = sorted(set(choices))
    text = "valid: " + (", ".join(choices) if choices else "(none)")
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        text += f"; did you mean '{close[0]}'?"
    return text


class PluginError(VaeforgeError):
    """A plugin broke its contract (wrong output shape or type, a failed import); the message names it."""


def write_failure(exc: OSError) -> tuple[str, str]:
    """What stopped a write and its fix, in words: ``("disk full", "free space on that disk")`` (or over quota),
    else the system's message and a fix for the folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full", "free space on that disk"
    return exc.strerror or str(exc), "make the folder writable"


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The one wording of every unknown-choice error: ``unknown <what> '<value>' (valid: ...; did you mean ...)``."""
    return ConfigError(f"unknown {what} '{value}' ({did_you_mean(str(value), [str(c) for c in choices])})")

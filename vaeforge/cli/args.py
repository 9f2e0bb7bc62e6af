"""``key=value`` command-line arguments shared by every entry point."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from ..config.yamlfile import parse_yaml
from ..errors import ConfigError, VaeforgeError

# YAML 1.1 reads these as booleans; on a command line they are words (``trainer.mixed_precision=no``).
YAML11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``a.b=value`` arguments; values are read as YAML (``3``, ``true``, ``[1,2]``, ``"Pale Skin"``)."""
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(f"argument '{arg}' is not of the form key=value")
        try:
            value = raw if raw == "" or raw.lower() in YAML11_BOOL_WORDS else parse_yaml(raw)
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def user_errors_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an entry point; a :class:`VaeforgeError` becomes one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except VaeforgeError as exc:
            print(f"vaeforge: error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def one_line(exc: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker arrives re-raised with the worker's
    traceback as its message: its last line ("module.Class: message") holds the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if f"{type(exc).__name__}: " in last else last

"""``key=value`` command-line arguments shared by every entry point."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from ..config.yamlfile import parse_yaml
from ..errors import ConfigError

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

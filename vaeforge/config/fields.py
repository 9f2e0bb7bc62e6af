"""Declared choices and ranges of config fields, and the one check of them.

A field says what it accepts where it is declared, in the run schema or in a plugin's config dataclass::

    kind: str = choice("mse", ("mse", "l1"))  # the comment on the line is its documentation
    batch_size: int = at_least(1, 64)

:func:`check_values` walks a config (dataclasses, nested, and dicts of them) and raises one
:class:`~vaeforge.errors.ConfigError` for the first value outside what its field declares, with the same
wording everywhere (``unknown <key> 'x' (valid: ...; did you mean ...)``, ``<key> must be >= 1, got 0``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, fields, is_dataclass
from typing import Any

from ..errors import ConfigError, unknown_choice

CHOICES, LOW, HIGH, LOW_OPEN, NULL_OK = "choices", "low", "high", "low_open", "null_ok"
SWITCHES = ("off", "on", "auto")  # the values of a switch field


def switch(default: str) -> Any:
    """An off / on / auto field (type ``Union[bool, str]``): YAML reads a bare ``off`` or ``on`` (and ``false``,
    ``true``) as a boolean, which counts the same."""
    return field(default=default, metadata={CHOICES: SWITCHES})


def switch_value(value: bool | str) -> str:
    """A switch field's value as one of off, on, auto."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def choice(default: str, choices: Sequence[str]) -> Any:
    """A string field that must be one of ``choices``."""
    return field(default=default, metadata={CHOICES: tuple(choices)})


def at_least(low: float, default: Any) -> Any:
    """A number field that must be >= ``low`` (``None`` allowed when it is the default)."""
    return field(default=default, metadata={LOW: low, NULL_OK: default is None})


def above(low: float, default: Any, high: float | None = None) -> Any:
    """A number field that must be > ``low`` (and <= ``high`` when given; ``None`` allowed when it is the
    default)."""
    meta = {LOW: low, LOW_OPEN: True, NULL_OK: default is None}
    return field(default=default, metadata=meta if high is None else {**meta, HIGH: high})


def between(low: float, high: float, default: Any) -> Any:
    """A number field that must lie in [``low``, ``high``]."""
    return field(default=default, metadata={LOW: low, HIGH: high})


def describe(meta: Any) -> str:
    """What a field accepts, for ``--help`` and the config reference ("" when it declares nothing)."""
    if CHOICES in meta:
        return "one of " + ", ".join(map(str, meta[CHOICES]))
    parts = []
    if LOW in meta:
        parts.append(f"{'>' if meta.get(LOW_OPEN) else '>='} {meta[LOW]:g}")
    if HIGH in meta:
        parts.append(f"<= {meta[HIGH]:g}")
    return " and ".join(parts) + (" or null" if meta.get(NULL_OK) else "")


def check_field(key: str, value: Any, meta: Any, where: str = "") -> None:
    """Raise the one-line error (``where`` before it) when ``value`` is outside what the field's ``meta``
    declares."""
    if CHOICES in meta:
        value = switch_value(value) if meta[CHOICES] == SWITCHES else value
        if value not in meta[CHOICES]:
            raise ConfigError(f"{where}{unknown_choice(key, value, meta[CHOICES])}")
        return
    if value is None and meta.get(NULL_OK) or (LOW not in meta and HIGH not in meta):
        return
    low_ok = LOW not in meta or (value > meta[LOW] if meta.get(LOW_OPEN) else value >= meta[LOW])
    if not (isinstance(value, (int, float)) and low_ok and (HIGH not in meta or value <= meta[HIGH])):
        raise ConfigError(f"{where}{key} must be {describe(meta)}, got {value!r}")


def check_values(config: Any, where: str = "", prefix: str = "") -> None:
    """Check every declared field of a config dataclass (recursively, dotted keys under ``prefix``); ``where``
    starts each error (e.g. the plugin the options belong to)."""
    if isinstance(config, dict):
        for key, value in config.items():
            check_values(value, where, f"{prefix}{key}.")
        return
    if not is_dataclass(config):
        return
    for f in fields(config):
        value = getattr(config, f.name)
        check_field(f"{prefix}{f.name}", value, f.metadata, where)
        check_values(value, where, f"{prefix}{f.name}.")

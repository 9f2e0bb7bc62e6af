"""YAML read safely, as plain data. A recipe, a run folder's ``config.yaml`` or a SLURM profile may come from
someone else: anchors and aliases are refused (a few hundred bytes of nested aliases expand to billions of
values), files are bounded in size, their keys must be names, and every error names the file and a position,
never its content (a recipe path pointed at a secret file must not print the secret)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

MAX_BYTES = 1 << 20  # recipes, configs and profiles are a few KB
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # what every key of a recipe, config or profile looks like
QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")  # what YAML's messages quote: from the file, or its own words
OWN_WORDS = re.compile(r"<[a-z ]+>|[^A-Za-z0-9]*|\\[a-z]")  # token names ('<stream end>'), punctuation, escapes ('\t')


class AliasError(yaml.MarkedYAMLError):
    """An anchor (``&name``) or alias (``*name``): refused, see the module's doc."""


class PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases before anything is built from them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise AliasError(problem="anchor or alias", problem_mark=event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """``text`` as plain data (``yaml.safe_load`` without anchors and aliases); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=PlainLoader)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping of names (``what``: "recipe", "run config", "slurm profile") as plain data;
    every problem is one :class:`ConfigError` naming the file."""
    text = _read_text(path, what)
    try:
        data = parse_yaml(text)
    except AliasError as exc:
        raise ConfigError(f"{path}: YAML anchors and aliases (&name, *name) are not read (line "
                          f"{exc.problem_mark.line + 1}): write the values out") from None
    except yaml.MarkedYAMLError as exc:
        mark, problem = exc.problem_mark, _without_content(exc.problem or "syntax error")
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{problem}): fix it, or pass a {what} file") from None
    except yaml.YAMLError:  # characters YAML does not allow
        raise ConfigError(f"{path}: not a text file: pass a {what} file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys to values")
    if not all(isinstance(key, str) and NAME.fullmatch(key) for key in _keys(data)):
        raise ConfigError(f"{path}: not a {what}: it has keys that are not names (letters, digits, _ . -)")
    return data


def _read_text(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES >> 20} MB: not a {what} file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file: pass a {what} file") from None


def _without_content(problem: str) -> str:
    """YAML's message with what it quotes from the file replaced by '...'."""
    return QUOTED.sub(lambda m: m[0] if OWN_WORDS.fullmatch(m[1] or m[2] or "") else "'...'", problem)


def _keys(data: dict[Any, Any]) -> list[Any]:
    """Every key of a nested mapping (not those of mappings inside lists: those are values)."""
    keys = list(data)
    for value in data.values():
        if isinstance(value, dict):
            keys += _keys(value)
    return keys

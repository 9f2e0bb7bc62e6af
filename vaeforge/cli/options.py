"""The one option parser of every verb: ``key=value`` arguments checked against the verb's options dataclass
(unknown keys with the valid ones and a did-you-mean, types converted, declared choices and ranges checked),
and ``--help`` rendered from the same dataclass as docs/config.md (keys, types, defaults, what each accepts,
the field's comment)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import OmegaConf

from ..config.fields import check_values
from ..config.loader import check_keys, merge, overrides_as_tree
from ..config.reference import rows
from ..errors import ConfigError
from .args import parse_overrides

T = TypeVar("T")
HELP = ("-h", "--help")


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP for a in argv)


def help_text(usage: str, options: type, extra: str = "") -> str:
    """``usage``, then one line per option: key, type, default, what it accepts, meaning."""
    table = rows(options)
    width = max(len(key) for key, *_ in table)
    lines = [usage, "", "options (key=value):"]
    for key, kind, default, accepts, meaning in table:
        detail = "; ".join(x for x in (accepts, meaning) if x)
        lines.append(f"  {key:<{width}}  {kind} = {default}" + (f"  ({detail})" if detail else ""))
    return "\n".join(lines + ([extra] if extra else [])) + "\n"


def parse_options(argv: Sequence[str], options: type[T], verb: str, usage: str) -> T:
    """The verb's options from ``argv``; ``--help`` prints them and exits 0."""
    if wants_help(argv):
        print(help_text(usage, options), end="")
        raise SystemExit(0)
    return options_from(parse_overrides(argv), options, verb)


def options_from(args: dict[str, Any], options: type[T], verb: str) -> T:
    """Check parsed ``key=value`` arguments against ``options`` and return the filled-in instance."""
    where = f"{verb} options"
    schema = OmegaConf.structured(options)
    check_keys(schema, list(args), where)
    cfg = merge(schema, overrides_as_tree(args), where)
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"missing required option(s) of {verb}: {', '.join(f'{key}=...' for key in missing)}")
    result = OmegaConf.to_object(cfg)
    check_values(result)
    return result  # type: ignore[return-value]


def argv_or_sys(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else argv

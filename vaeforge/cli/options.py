"""One option parser for every verb: ``key=value`` arguments (:func:`read_args`), checked against the verb's
options dataclass by :func:`~vaeforge.config.loader.validate_options`, and ``--help`` printed from the same
dataclass rows that docs/config.md is generated from."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config.reference import rows
from .args import parse_overrides
from .logs import FLAGS_HELP

HELP_FLAGS = ("-h", "--help")
WIDEST = 24  # a longer key, type or default pushes its own row's text along, not every row's
Section = tuple[str, type, str]  # (title, options dataclass, key prefix)


def read_args(argv: Sequence[str] | None, help_for: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """The ``key=value`` arguments of a verb (``sys.argv[1:]`` when ``argv`` is None). With ``-h``/``--help``
    anywhere, print ``help_for(the other arguments)`` (so ``task=sample --help`` can show that task's options)
    and exit 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        text = help_for(parse_overrides([arg for arg in argv if arg not in HELP_FLAGS]))
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `--help | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    return parse_overrides(argv)


def help_text(usage: str, about: str, sections: Sequence[Section], note: str = "") -> str:
    """A verb's help: usage, what it does, then one aligned table per section (key, type, default, accepts,
    meaning)."""
    lines = [f"usage: {usage}", "", about]
    for title, cls, prefix in sections:
        table = rows(cls, prefix)
        widths = [min(WIDEST, max(len(row[i]) for row in table)) for i in range(3)] if table else [0, 0, 0]
        lines += ["", f"{title}:"]
        for key, type_name, default, accepts, meaning in table:
            text = "; ".join(part for part in (accepts, meaning) if part)
            lines.append(f"  {key:<{widths[0]}}  {type_name:<{widths[1]}}  {default:<{widths[2]}}  {text}".rstrip())
    lines += ["", *([note] if note else []), FLAGS_HELP]
    return "\n".join(lines)

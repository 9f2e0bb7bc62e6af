"""The configuration reference (docs/config.md), generated from the schema and the plugins' config
dataclasses so that it cannot drift from the code: ``python -m vaeforge.config.reference > docs/config.md``."""
from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from ..registry import KINDS, REGISTRY
from .fields import describe
from .schema import RunConfig

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def _comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines (its bases' too): the schema documents itself in
    place."""
    notes: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        notes.update({m.group(1): m.group(2).strip() for m in map(_FIELD_LINE.match, source.splitlines()) if m})
    return notes


def _default(f: Any) -> str:
    if f.default is not MISSING:
        return "required" if f.default == "???" else repr(f.default)
    if f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "(see below)" if is_dataclass(value) else repr(value)
    return "required"


def _type_name(tp: Any) -> str:
    return (tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))).replace("typing.", "")


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, accepts, meaning) for every field, nested dataclasses flattened with dotted keys."""
    out: list[tuple[str, str, str, str, str]] = []
    notes = _comments(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        nested = f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]
        if is_dataclass(nested):
            out += rows(type(nested), key + ".")
        else:
            out.append((key, _type_name(f.type), _default(f), describe(f.metadata), notes.get(f.name, "")))
    return out


def _table(entries: list[tuple[str, str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines += [f"| `{k}` | {cell(t)} | `{d}` | {cell(a)} | {cell(m)} |" for k, t, d, a, m in entries]
    return lines


def _verb_options() -> list[tuple[str, type, str]]:
    """(command, options dataclass, key prefix) of every verb but train, whose options are the run config; a
    command is the verb and, where one option picks the others, that option (``prepare dataset=folder``)."""
    from ..cli import PluginsOptions
    from ..models.lpips_weights import LpipsOptions
    from ..prepare import OPTIONS
    from ..runs.export import ExportOptions
    from ..runs.leaderboard import LeaderboardOptions
    from ..runs.report import ReportOptions
    from ..submit import SlurmConfig, SubmitOptions
    from ..tasks.runner import TaskOptions

    prepare = [(f"prepare dataset={name}", options, "") for name, options in OPTIONS.items()]
    return [*prepare, ("lpips", LpipsOptions, ""), ("run", TaskOptions, ""),
            ("submit", SubmitOptions, ""), ("submit slurm=PROFILE", SlurmConfig, "slurm."),
            ("report", ReportOptions, ""), ("leaderboard", LeaderboardOptions, ""), ("export", ExportOptions, ""),
            ("plugins", PluginsOptions, "")]


def render() -> str:
    """The whole reference as Markdown; of the plugins, those vaeforge ships (not third-party ones that happen
    to be installed or imported)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `vaeforge/config/schema.py` and the plugins' config dataclasses by",
        "`python -m vaeforge.config.reference > docs/config.md` (a test fails when this file is stale).",
        "Any key can be set in a recipe or overridden on the command line as `key=value`.",
        "",
        "## Run config (`vaeforge train`)",
        "",
        *_table(rows(RunConfig)),
        "",
        "`model.backbone` is `{name, args}` and each `losses.<term>` is `{name, weight, args}`; `args` are the",
        "plugin's own options, listed below.",
    ]
    lines += ["", "## Command options", "",
              "The `key=value` options of the other verbs (`vaeforge <verb> --help` prints the same table)."]
    for verb, cls, prefix in _verb_options():
        lines += ["", f"### `vaeforge {verb}`", "", *_table(rows(cls, prefix))]
    for kind in KINDS:
        lines += ["", f"## {kind.capitalize()} plugins"]
        for plugin in (p for p in REGISTRY.all() if p.kind == kind and p.builtin):
            doc = inspect.getdoc(inspect.getmodule(plugin.target)) or ""
            lines += ["", f"### `{plugin.name}`", "", doc.split("\n\n")[0].replace("\n", " "), ""]
            lines += _table(rows(plugin.config)) if plugin.config else ["No options."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")

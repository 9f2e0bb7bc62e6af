"""One registry per plugin kind, filled from the ``vaeforge.plugins`` entry points and user modules.

A plugin module registers itself on import with the ``register_*`` decorators of :mod:`vaeforge.api`.
Built-in plugins are found the same way as third-party ones: through their distribution's entry points.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, is_dataclass
from typing import Any

from .errors import ConfigError, did_you_mean

ENTRY_POINT_GROUP = "vaeforge.plugins"
KINDS = ("backbone", "loss", "task", "prior")


@dataclass(frozen=True)
class Plugin:
    """A registered plugin: its kind, name, the object that builds it, its config schema and where it came from."""

    kind: str
    name: str
    target: Any
    config: type | None
    origin: str


class Registry:
    """Plugins by kind and name."""

    def __init__(self) -> None:
        self._plugins: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}
        self._origin = "unknown"
        self._discovered = False
        self._failed: dict[str, str] = {}

    def register(self, kind: str, name: str, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator: register ``target`` as plugin ``name`` of ``kind``, with an optional config dataclass."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind '{kind}' ({did_you_mean(kind, KINDS)})")
        if config is not None and not is_dataclass(config):
            raise TypeError(f"config of {kind} plugin '{name}' must be a dataclass")

        def decorator(target: Any) -> Any:
            existing = self._plugins[kind].get(name)
            if existing is not None and existing.target is not target:
                warnings.warn(
                    f"{kind} plugin '{name}' from {self._origin} replaces the one from {existing.origin}",
                    stacklevel=2,
                )
            self._plugins[kind][name] = Plugin(kind, name, target, config, self._origin)
            return target

        return decorator

    @contextlib.contextmanager
    def _origin_as(self, origin: str) -> Iterator[None]:
        previous, self._origin = self._origin, origin
        try:
            yield
        finally:
            self._origin = previous

    def discover(self) -> None:
        """Import every module declared under the ``vaeforge.plugins`` entry-point group (once)."""
        if self._discovered:
            return
        self._discovered = True
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else ""
            with self._origin_as(f"{dist} {version} ({ep.value})".strip()):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must not break the others
                    self._failed[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
                    warnings.warn(f"plugin entry point '{ep.name}' failed to load: {exc}", stacklevel=2)

    def import_modules(self, modules: list[str]) -> None:
        """Import user plugin modules named in a recipe's ``plugins`` list."""
        self.discover()
        for module in modules:
            with self._origin_as(f"module {module}"):
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    raise ConfigError(f"plugin module '{module}' not found ({exc}); is it on PYTHONPATH?") from None

    def get(self, kind: str, name: str) -> Plugin:
        """The plugin ``name`` of ``kind``; unknown names give the valid ones and a did-you-mean."""
        self.discover()
        plugins = self._plugins[kind]
        if name not in plugins:
            hint = f"; entry point failed to load: {self._failed[name]}" if name in self._failed else ""
            raise ConfigError(f"unknown {kind} plugin '{name}' ({did_you_mean(name, plugins)}){hint}")
        return plugins[name]

    def names(self, kind: str) -> list[str]:
        self.discover()
        return sorted(self._plugins[kind])

    def all(self) -> list[Plugin]:
        """Every registered plugin, by kind then name."""
        self.discover()
        return [self._plugins[k][n] for k in KINDS for n in sorted(self._plugins[k])]


REGISTRY = Registry()

"""One registry per plugin kind, filled from the ``vaeforge.plugins`` entry points and user modules.

A plugin module registers itself on import with the ``register_*`` decorators of :mod:`vaeforge.api`.
Built-in plugins are found the same way as third-party ones: through their distribution's entry points.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

from .errors import ConfigError, PluginError, did_you_mean

ENTRY_POINT_GROUP = "vaeforge.plugins"
BUILTIN_DIST = "vaeforge"  # the distribution whose plugins are the built-in ones
KINDS = ("backbone", "loss", "task", "prior")


@dataclass(frozen=True)
class Plugin:
    """A registered plugin: its kind, name, the object that builds it, its config schema and where it came from."""

    kind: str
    name: str
    target: Any
    config: type | None
    origin: str
    replace: bool = False  # registered with replace=True: it may take the name of a built-in plugin
    distribution: str = ""  # the installed distribution that declared it ("" for a module named by the user)
    version: str = ""  # that distribution's version

    @property
    def builtin(self) -> bool:
        return self.origin.startswith(f"{BUILTIN_DIST} ")


UNKNOWN = "unknown"  # the origin of a plugin registered outside discovery and import_modules


class Registry:
    """Plugins by kind and name.

    Clash rule: a name belongs to the first plugin registered under it, and a built-in plugin keeps its name
    whatever the import order; another registration takes the name only with ``replace=True`` (and is ignored,
    with a warning naming both, otherwise)."""

    def __init__(self) -> None:
        self._plugins: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}
        self._source = (UNKNOWN, "", "")  # (origin, distribution, version) of the plugins registered now
        self._discovered = False
        self._failed: dict[str, str] = {}
        self._registrations = 0  # register() calls so far: tells a plugin module that registered nothing

    def register(self, kind: str, name: str, config: type | None = None, replace: bool = False
                 ) -> Callable[[Any], Any]:
        """Decorator: register ``target`` as plugin ``name`` of ``kind``, with an optional config dataclass."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind '{kind}' ({did_you_mean(kind, KINDS)})")
        if config is not None and not is_dataclass(config):
            raise TypeError(f"config of {kind} plugin '{name}' must be a dataclass")

        def decorator(target: Any) -> Any:
            self._registrations += 1
            origin, distribution, version = self._source
            new = Plugin(kind, name, target, config, origin, replace, distribution, version)
            existing = self._plugins[kind].get(name)
            if existing is None or existing.target is target or self._takes_name(new, existing):
                self._plugins[kind][name] = new
            return target

        return decorator

    @staticmethod
    def _takes_name(new: Plugin, existing: Plugin) -> bool:
        """Whether ``new`` replaces ``existing`` under the clash rule; warns either way."""
        takes = new.replace and not existing.replace or new.builtin and not existing.replace
        loser, winner = (existing, new) if takes else (new, existing)
        hint = "" if loser.builtin or loser.replace else "; to replace it, register with replace=True"
        warnings.warn(f"{new.kind} plugin '{new.name}' from {winner.origin} is used, the one from {loser.origin} "
                      f"is ignored{hint}", stacklevel=3)
        return takes

    @contextlib.contextmanager
    def _origin_as(self, origin: str, distribution: str = "", version: str = "") -> Iterator[None]:
        previous, self._source = self._source, (origin, distribution, version)
        try:
            yield
        finally:
            self._source = previous

    def discover(self) -> None:
        """Import every module declared under the ``vaeforge.plugins`` entry-point group (once)."""
        if self._discovered:
            return
        self._discovered = True
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else ""
            origin = f"{dist} {version} ({ep.value})".strip()
            with self._origin_as(origin, dist, version):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must not break the others
                    self._failed[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
                    warnings.warn(f"plugin entry point '{ep.name}' failed to load: {exc}", stacklevel=2)
            self._claim(ep.module, origin, dist, version)

    def _claim(self, module: str, origin: str, distribution: str, version: str) -> None:
        """Give an entry point's origin to the plugins its module registered when it was imported before
        discovery (``from vaeforge_plugins.losses.adversarial import ...``), so a built-in stays built-in, or while
        another entry point of the same distribution was loading (a plugin module that imports a sibling's blocks),
        so each is credited to its own module."""
        for plugins in self._plugins.values():
            for name, plugin in plugins.items():
                sibling = (plugin.distribution, plugin.version) == (distribution, version)
                if (plugin.origin == UNKNOWN or sibling) and getattr(plugin.target, "__module__", None) == module:
                    plugins[name] = replace(plugin, origin=origin, distribution=distribution, version=version)

    def import_modules(self, modules: list[str]) -> None:
        """Import user plugin modules (a recipe's ``plugins`` list, or ``plugins=[...]`` on a command line)."""
        self.discover()
        for module in modules:
            before, imported_before = self._registrations, module in sys.modules
            with self._origin_as(f"module {module}"):
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    raise ConfigError(f"plugin module '{module}' not found ({exc}); is it on PYTHONPATH?") from None
                except Exception as exc:
                    raise PluginError(f"plugin module '{module}' failed to import: {type(exc).__name__}: {exc}"
                                      ) from None
            if not imported_before and self._registrations == before:
                raise PluginError(f"plugin module '{module}' registered no plugin: decorate its builders with "
                                  "register_backbone / register_loss / register_task from vaeforge.api")

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


@contextlib.contextmanager
def named_modules_hint(named: list[str], imported: list[str]) -> Iterator[None]:
    """An unknown-plugin error inside the block also says which modules a run folder names but that were not
    imported (a run folder is data: what it names is imported only when the user passes it)."""
    try:
        yield
    except ConfigError as exc:
        skipped = [m for m in named if m not in imported]
        if not skipped or "unknown" not in str(exc):
            raise
        raise ConfigError(f"{exc}; the run names plugin modules {skipped}, which are never imported from a run "
                          f"folder: if you trust them, pass plugins=[{','.join(skipped)}]") from None

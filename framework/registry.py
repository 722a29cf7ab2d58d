"""One registry per component kind, recording which plugin provided each name."""

from __future__ import annotations

import functools
import pkgutil
from dataclasses import dataclass, field

from framework.errors import PluginError, did_you_mean, one_line

KINDS = ("reader", "preprocessor", "model", "writer")
BUILT_IN = "infer-run"  # the distribution the built-in plugins come with


def origin(distribution: str | None, version: str | None) -> str:
    """Where a plugin comes from, so that a clash says which package to uninstall:
    ``built-in``, ``from infer-shout 1.2.3``, or "" for a module no distribution declares."""
    if distribution is None:
        return ""
    if distribution == BUILT_IN:
        return "built-in"
    return f"from {distribution} {version}" if version else f"from {distribution}"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    # The class, or its "module:Class" path, imported when a spec first names it: a
    # plugin built on torch then costs nothing to a run (or a spec check) not using it.
    target: type | str
    plugin: str  # pluggy's plugin name: the entry-point name, or the module for test plugins
    distribution: str | None = None
    version: str | None = None

    @property
    def class_path(self) -> str:
        """``plugins.echo.EchoModel``, without importing a lazily registered class."""
        if isinstance(self.target, str):
            return self.target.replace(":", ".")
        return f"{self.target.__module__}.{self.target.__qualname__}"

    @functools.cached_property
    def cls(self) -> type:
        """The registered class; a ``module:Class`` path is imported and checked here."""
        if not isinstance(self.target, str):
            return self.target
        try:
            found = pkgutil.resolve_name(self.target)
        except Exception as exc:
            raise PluginError(
                f"plugin {self.plugin!r} registered {self.kind} {self.name!r} as "
                f"{self.target!r}, which cannot be imported: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
        check_class(self, found)
        return found

    def described(self) -> str:
        """``plugins.echo.EchoModel, built-in``: the class, and its distribution if any."""
        where = origin(self.distribution, self.version)
        return self.class_path + (f", {where}" if where else "")


def check_class(entry: Entry, cls: object) -> None:
    """Refuse what would register, then fail in every worker with Ray's traceback."""
    if not isinstance(cls, type):
        raise PluginError(
            f"plugin {entry.plugin!r} registered {entry.kind} {entry.name!r} "
            f"as {cls!r}, which is not a class"
        )
    from framework.components import BASES  # components imports this module's errors

    base = BASES[entry.kind]
    if not issubclass(cls, base):
        raise PluginError(
            f"plugin {entry.plugin!r} registered {entry.kind} {entry.name!r} as "
            f"{cls.__qualname__}, which is not a framework.{base.__name__}"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise PluginError(
            f"plugin {entry.plugin!r} registered {entry.kind} {entry.name!r} as "
            f"{cls.__qualname__}, which does not define {', '.join(missing)}"
        )


@dataclass
class Registry:
    """Names to classes for every kind; ``add`` refuses a name registered twice."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, entry: Entry) -> None:
        if isinstance(entry.name, type):
            raise PluginError(
                f"plugin {entry.plugin!r} called register({entry.name.__qualname__}, ...): "
                f"the name comes first - register('name', {entry.name.__qualname__})"
            )
        if not isinstance(entry.name, str):
            raise PluginError(
                f"plugin {entry.plugin!r} registered a {entry.kind} named {entry.name!r} "
                f"({type(entry.name).__name__}): a name is a string"
            )
        if not entry.name:
            raise PluginError(
                f"plugin {entry.plugin!r} registered a {entry.kind} with an empty name"
            )
        if isinstance(entry.target, str):
            module, _, attribute = entry.target.partition(":")
            if not module or not attribute:
                raise PluginError(
                    f"plugin {entry.plugin!r} registered {entry.kind} {entry.name!r} as "
                    f"{entry.target!r}: give the class, or its path as 'package.module:Class'"
                )
        else:
            check_class(entry, entry.target)
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(
                f"{entry.kind} {entry.name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.described()}) and by plugin {entry.plugin!r} ({entry.described()})"
            )
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def find(self, kind: str, name: str) -> Entry | None:
        return self.entries[kind].get(name)

    def unknown_message(self, kind: str, name: object) -> str:
        """The line for a name nobody registered, with the close ones or the full list."""
        names = self.names(kind)
        hint = did_you_mean(str(name), names)
        if not hint:
            hint = f" - registered {kind}s: {', '.join(names) if names else '(none)'}"
        return f"unknown {kind} {name!r}{hint}"

    def all(self) -> list[Entry]:
        return [e for kind in KINDS for _, e in sorted(self.entries[kind].items())]

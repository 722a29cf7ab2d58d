"""Build the plugin manager: load every ``infer_run`` entry point, built-ins included.

Switches, read from the environment:
``INFER_LOAD_PLUGINS=a,b`` loads only those plugins, ``INFER_DISABLE_PLUGINS=x,y``
blocks those, ``INFER_PLUGINS=pkg.mod,other.mod`` also registers importable modules
that no distribution declares (a plugin under development), and
``INFER_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from framework import hookspecs
from framework.errors import PluginError, did_you_mean, one_line
from framework.registry import KINDS, Entry, Registry, origin

ENTRY_POINT_GROUP = "infer_run"
_HOOK_BY_KIND = {kind: f"register_{kind}s" for kind in KINDS}


def _split(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]:
    found = []
    seen: set[tuple[str, str]] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            # The same distribution can sit on sys.path twice (editable + build dir).
            if ep.group == ENTRY_POINT_GROUP and (ep.name, ep.value) not in seen:
                seen.add((ep.name, ep.value))
                found.append((ep, dist))
    return sorted(found, key=lambda pair: pair[0].name)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.distributions: dict[str, importlib.metadata.Distribution] = {}


def make_plugin_manager(
    extra_plugins: Iterable[object] = (),
    env: Mapping[str, str] | None = None,
    load_entrypoints: bool = True,
) -> PluginManager:
    """A fresh manager with hooks checked; ``extra_plugins`` are registered after entry points."""
    env = os.environ if env is None else env
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    only, blocked = _split(env.get("INFER_LOAD_PLUGINS")), _split(env.get("INFER_DISABLE_PLUGINS"))
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints:
        for ep, dist in _entry_points():
            if (only and ep.name not in only) or pm.is_blocked(ep.name):
                continue
            if pm.has_plugin(ep.name):
                other = pm.get_plugin(ep.name)
                first = _described(getattr(other, "__name__", other), pm.distributions.get(ep.name))
                raise PluginError(
                    f"two plugins are named {ep.name!r}: {first} and {_described(ep.value, dist)}"
                )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"error importing plugin {ep.name!r} ({ep.value}) from "
                    f"{dist.metadata['Name']} {dist.version}: {type(exc).__name__}: {one_line(exc)}"
                ) from exc
            _register(pm, plugin, ep.name)
            pm.distributions[ep.name] = dist
            _require_a_hook(pm, ep.name)
    for module_name in sorted(_split(env.get("INFER_PLUGINS"))):
        if pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"error importing plugin {module_name!r} (from INFER_PLUGINS): "
                f"{type(exc).__name__}: {one_line(exc)}"
            ) from exc
        loaded_as = pm.get_name(module)  # installed too: pluggy's error dumps every plugin
        if loaded_as is not None:
            raise PluginError(
                f"plugin {module_name!r} (from INFER_PLUGINS) is already loaded as plugin "
                f"{_described(repr(loaded_as), pm.distributions.get(loaded_as))} "
                "- leave it out of INFER_PLUGINS"
            )
        if pm.has_plugin(module_name):  # pluggy's error dumps every plugin
            other = pm.get_plugin(module_name)
            first = _described(getattr(other, "__name__", other), pm.distributions.get(module_name))
            raise PluginError(
                f"two plugins are named {module_name!r}: {first} and {module_name} "
                "(from INFER_PLUGINS)"
            )
        _register(pm, module, module_name)
        _require_a_hook(pm, module_name)
    for plugin in extra_plugins:
        _register(pm, plugin, None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        hooks = ", ".join(sorted(_HOOK_BY_KIND.values()))
        hook = str(exc).split("'")[1] if "'" in str(exc) else ""
        raise PluginError(
            f"plugin {name!r}: unknown hook {hook!r}{did_you_mean(hook, _HOOK_BY_KIND.values())}"
            f" (hooks: {hooks})"
        ) from exc
    if env.get("INFER_TRACE_PLUGINS", "").lower() in ("1", "true", "yes"):
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
    return pm


def _described(plugin: object, dist: importlib.metadata.Distribution | None) -> str:
    where = origin(dist.metadata["Name"], dist.version) if dist else ""
    return f"{plugin} ({where})" if where else str(plugin)


def _require_a_hook(pm: PluginManager, name: str) -> None:
    """A plugin pluggy finds no hook in (``@hookimpl`` forgotten, an entry point naming a
    class) would register nothing, and a spec using it fail as if it were not installed."""
    if pm.get_hookcallers(pm.get_plugin(name)):
        return
    raise PluginError(
        f"plugin {_described(repr(name), pm.distributions.get(name))} implements no hook - mark its "
        f"register_* functions with @framework.hookimpl (hooks: {', '.join(sorted(_HOOK_BY_KIND.values()))})"
    )


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    try:
        pm.register(plugin, name)
    except pluggy.PluginValidationError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PluginError(f"plugin {pm.get_name(exc.plugin) or name!r}: {detail}") from exc
    except ValueError as exc:  # the same plugin object or name registered twice
        raise PluginError(str(exc)) from exc


def _trace_before(hook_name: str, impls: list[Any], kwargs: Mapping[str, Any]) -> None:
    names = ", ".join(impl.plugin_name for impl in impls)
    print(f"[infer-run trace] {hook_name} -> {names}", file=sys.stderr)


def _trace_after(outcome: Any, hook_name: str, impls: list[Any], kwargs: Mapping[str, Any]) -> None:
    if outcome.exception is not None:
        print(f"[infer-run trace] {hook_name} raised {outcome.exception!r}", file=sys.stderr)


def build_registry(pm: PluginManager) -> Registry:
    """Ask each plugin for its components, one plugin at a time, to know who registered what."""
    registry = Registry()
    for kind, hook_name in _HOOK_BY_KIND.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist = pm.distributions.get(impl.plugin_name)
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)

            # Keyword-only: a stray third argument (a kind) must not become the plugin name.
            def register(
                name: str,
                cls: type | str,
                *,
                _plugin: str = impl.plugin_name,
                _dist=dist,
                _kind=kind,
            ) -> None:
                registry.add(
                    Entry(
                        kind=_kind,
                        name=name,
                        target=cls,
                        plugin=_plugin,
                        distribution=_dist.metadata["Name"] if _dist else None,
                        version=_dist.version if _dist else None,
                    )
                )

            try:
                returned = caller(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: its {hook_name} hook raised "
                    f"{type(exc).__name__}: {one_line(exc)}"
                ) from exc
            if any(r is not None for r in returned):
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: its {hook_name} hook returned a value, "
                    "which is ignored - call register('name', Class) for each component"
                )
    return registry


def load_registry(extra_plugins: Iterable[object] = ()) -> Registry:
    return build_registry(make_plugin_manager(extra_plugins))


@functools.cache
def _cached_registry() -> Registry:
    return load_registry()


def component_class(kind: str, name: str) -> type:
    """The class registered as ``name`` for ``kind``, for plugins that build on each other
    (an image stage reading a model plugin's preprocessing); KeyError naming close names."""
    entry = _cached_registry().find(kind, name)
    if entry is None:
        raise KeyError(_cached_registry().unknown_message(kind, name))
    return entry.cls

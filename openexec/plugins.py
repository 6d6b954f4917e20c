"""Plugin loading: entry points in, a frozen registry of allowed actions out.

Everything here runs once, at startup. The plugin manager is discarded once the registry
is built, so nothing can register, import or replace a handler afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

import pluggy

from openexec import hookspecs
from openexec.actions import Action
from openexec.settings import ConfigError, Settings

ENTRY_POINT_GROUP = "openexec"


class PluginError(Exception):
    """A plugin could not be loaded or conflicts with another; startup stops."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class RegisteredAction:
    """An action together with the distribution that registered it."""

    action: Action
    plugin_name: str
    plugin_version: str
    input_schema: dict[str, Any] = field(compare=False)

    @property
    def name(self) -> str:
        return self.action.name

    @property
    def description(self) -> str:
        return self.action.description


@dataclass(frozen=True)
class InProcessPlugin:
    """A plugin module or object registered directly, without installing it (tests, authors)."""

    plugin: object
    name: str
    version: str = "0.0.0"


@dataclass(frozen=True)
class Registry:
    """The actions loaded at startup, read-only, and which of them the allow-list lets run."""

    actions: Mapping[str, RegisteredAction]
    allowed: frozenset[str]
    plugins: tuple[PluginInfo, ...]
    restricted: bool
    allow_list: tuple[str, ...]

    def allowed_actions(self) -> list[RegisteredAction]:
        return [self.actions[name] for name in sorted(self.allowed)]


def normalise(name: str) -> str:
    """PEP 503 normalisation, so 'OpenExec_Echo' selects 'openexec-echo'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_registry(
    settings: Settings, in_process: Iterable[InProcessPlugin] | None = None
) -> Registry:
    """Build the registry from installed entry points, or only from ``in_process`` plugins."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    versions: dict[str, str] = {}  # distribution name -> version
    owners: dict[str, str] = {}  # registration name -> distribution name
    if in_process is None:
        for name, entries in _selected_entry_points(settings.plugins).items():
            versions[name] = entries[0].dist.version
            for entry_point in entries:  # one distribution may ship several entry points
                registration = name if len(entries) == 1 else f"{name}:{entry_point.name}"
                _register(manager, _import(entry_point, name), registration)
                owners[registration] = name
    else:
        for plugin in in_process:
            _register(manager, plugin.plugin, plugin.name)
            versions[plugin.name] = plugin.version
            owners[plugin.name] = plugin.name
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {manager.get_name(exc.plugin)!r} implements a hook that does not exist: {exc}"
        ) from None
    actions = _collect_actions(manager, settings, versions, owners)
    allowed = _apply_allow_list(actions, settings.allowed_actions)
    plugins = tuple(
        PluginInfo(
            name, versions[name], tuple(a.name for a in actions.values() if a.plugin_name == name)
        )
        for name in sorted(versions)
    )
    return Registry(
        actions=MappingProxyType(actions),
        allowed=allowed,
        plugins=plugins,
        restricted=settings.allowed_actions is not None,
        allow_list=settings.allowed_actions or (),
    )


def _selected_entry_points(wanted: tuple[str, ...] | None) -> dict[str, list[EntryPoint]]:
    """Choose entry points by distribution name before importing any of them."""
    installed: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.dist is None:
            continue
        installed.setdefault(normalise(entry_point.dist.name), []).append(entry_point)
    if wanted is None:
        chosen = sorted(installed)
    else:
        missing = [name for name in wanted if normalise(name) not in installed]
        if missing:
            raise ConfigError(
                "OPENEXEC_PLUGINS",
                f"plugin(s) not installed: {', '.join(missing)} "
                f"(installed: {', '.join(sorted(installed)) or 'none'})",
            )
        chosen = sorted({normalise(name) for name in wanted})
    return {installed[key][0].dist.name: installed[key] for key in chosen}


def _import(entry_point: EntryPoint, name: str) -> object:
    try:
        return entry_point.load()
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _register(manager: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        manager.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise PluginError(f"plugin {name!r} could not be registered: {exc}") from None


def _collect_actions(
    manager: pluggy.PluginManager,
    settings: Settings,
    versions: dict[str, str],
    owners: dict[str, str],
) -> dict[str, RegisteredAction]:
    """Call each plugin's hook separately, so every action is attributed to its plugin."""
    actions: dict[str, RegisteredAction] = {}
    for impl in manager.hook.register_actions.get_hookimpls():
        name = owners[impl.plugin_name]
        arguments = {"settings": settings} if "settings" in impl.argnames else {}
        try:
            provided = impl.function(**arguments)
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} failed in register_actions: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(provided, list | tuple) or not all(
            isinstance(a, Action) for a in provided
        ):
            raise PluginError(f"plugin {name!r}: register_actions must return a list of Action")
        for action in provided:
            if action.name in actions:
                other = actions[action.name].plugin_name
                raise PluginError(
                    f"action {action.name!r} is registered twice: by plugin {other!r} "
                    f"and by plugin {name!r}"
                )
            actions[action.name] = RegisteredAction(
                action=action,
                plugin_name=name,
                plugin_version=versions[name],
                input_schema=action.input.model_json_schema(),
            )
    return actions


def _apply_allow_list(
    actions: Mapping[str, RegisteredAction], allow_list: tuple[str, ...] | None
) -> frozenset[str]:
    """Names allowed to run; an entry that matches nothing stops startup (fail closed)."""
    if allow_list is None:
        return frozenset(actions)
    allowed: set[str] = set()
    for entry in allow_list:
        if entry.endswith(".*"):
            prefix = entry[:-1]
            matched = {name for name in actions if name.startswith(prefix)}
        else:
            matched = {entry} & set(actions)
        if not matched:
            raise ConfigError(
                "OPENEXEC_ALLOWED_ACTIONS",
                f"entry {entry!r} matches no registered action "
                f"(registered: {', '.join(sorted(actions)) or 'none'})",
            )
        allowed |= matched
    return frozenset(allowed)

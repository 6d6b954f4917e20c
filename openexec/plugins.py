"""Plugin loading: entry points in, a frozen registry of allowed actions out.

Everything here runs once, at startup. The plugin manager is discarded once the registry
is built, so nothing can register, import or replace a handler afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

import pluggy

from openexec import hookspecs, pack_settings
from openexec.actions import Action
from openexec.pack_settings import PackSettings
from openexec.settings import ConfigError, Settings

ENTRY_POINT_GROUP = "openexec"
log = logging.getLogger("openexec.plugins")


class PluginError(Exception):
    """A plugin could not be loaded or conflicts with another; startup stops."""


@dataclass(frozen=True)
class PluginInfo:
    """A loaded distribution: its actions, its settings by variable name (secrets redacted)
    and what it made of them, as ``/health`` and ``openexec plugins --json`` show them."""

    name: str
    version: str
    actions: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    effective: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LifecycleHook:
    """One plugin's implementation of a hook called after loading, with the arguments it takes."""

    plugin: str
    function: Callable[..., Any]
    arguments: Mapping[str, Any]


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
    startup_hooks: tuple[LifecycleHook, ...] = ()
    shutdown_hooks: tuple[LifecycleHook, ...] = ()
    collector_hooks: tuple[LifecycleHook, ...] = ()

    def allowed_actions(self) -> list[RegisteredAction]:
        return [self.actions[name] for name in sorted(self.allowed)]

    def start(self) -> None:
        """Run every plugin's ``startup``, in load order; the first failure stops startup."""
        for hook in self.startup_hooks:
            try:
                hook.function(**hook.arguments)
            except Exception as exc:
                raise PluginError(
                    f"plugin {hook.plugin!r} failed in startup: {type(exc).__name__}: {exc}"
                ) from exc

    def collectors(self) -> list[Any]:
        """Every plugin's ``register_collectors``, called now: the metrics the packs export."""
        found = []
        for hook in self.collector_hooks:
            try:
                provided = hook.function(**hook.arguments)
            except Exception as exc:
                raise PluginError(
                    f"plugin {hook.plugin!r} failed in register_collectors: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(provided, list | tuple) or not all(
                callable(getattr(collector, "collect", None)) for collector in provided
            ):
                raise PluginError(
                    f"plugin {hook.plugin!r}: register_collectors must return a list of "
                    "collectors (objects with a collect() method)"
                )
            found.extend(provided)
        return found

    def stop(self) -> None:
        """Run every plugin's ``shutdown``, last started first; a failure is logged and the
        others still run."""
        for hook in reversed(self.shutdown_hooks):
            try:
                hook.function(**hook.arguments)
            except Exception:
                log.exception("plugin %r failed in shutdown", hook.plugin)


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
    configured = _read_pack_settings(manager, settings, owners)
    arguments = {
        registration: MappingProxyType(
            {"settings": settings, "pack_settings": configured.get(registration)}
        )
        for registration in owners
    }
    actions = _collect_actions(manager, arguments, versions, owners)
    allowed = _apply_allow_list(actions, settings.allowed_actions)
    plugins = tuple(
        PluginInfo(
            name,
            versions[name],
            tuple(a.name for a in actions.values() if a.plugin_name == name),
            MappingProxyType(
                {
                    variable: value
                    for registration, pack in configured.items()
                    if owners[registration] == name
                    for variable, value in pack_settings.shown(pack).items()
                }
            ),
            MappingProxyType(
                {
                    key: value
                    for registration, pack in configured.items()
                    if owners[registration] == name
                    for key, value in pack.effective().items()
                }
            ),
        )
        for name in sorted(versions)
    )
    return Registry(
        actions=MappingProxyType(actions),
        allowed=allowed,
        plugins=plugins,
        restricted=settings.allowed_actions is not None,
        allow_list=settings.allowed_actions or (),
        startup_hooks=_lifecycle(manager.hook.startup, arguments, owners),
        shutdown_hooks=_lifecycle(manager.hook.shutdown, arguments, owners),
        collector_hooks=_lifecycle(manager.hook.register_collectors, arguments, owners),
    )


def _read_pack_settings(
    manager: pluggy.PluginManager, settings: Settings, owners: dict[str, str]
) -> dict[str, PackSettings]:
    """Each registration's settings, read from the environment the host started with."""
    models: dict[str, type[PackSettings]] = {}
    for impl in manager.hook.register_settings.get_hookimpls():
        name = owners[impl.plugin_name]
        try:
            models[impl.plugin_name] = pack_settings.check_model(impl.function())
        except pack_settings.PrefixError as exc:
            raise PluginError(f"plugin {name!r}: {exc}") from None
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} failed in register_settings: {type(exc).__name__}: {exc}"
            ) from exc
    clash = pack_settings.overlapping({r: model.env_prefix for r, model in models.items()})
    if clash:
        first, second = (owners[r] for r in clash)
        raise PluginError(
            f"plugins {first!r} and {second!r} claim overlapping settings prefixes "
            f"{models[clash[0]].env_prefix!r} and {models[clash[1]].env_prefix!r}"
        )
    return {
        registration: pack_settings.read(model, settings.pack_environment, owners[registration])
        for registration, model in models.items()
    }


def _lifecycle(
    hook: Any, arguments: Mapping[str, Mapping[str, Any]], owners: dict[str, str]
) -> tuple[LifecycleHook, ...]:
    """The implementations of a hook called after loading (``startup``, ``shutdown``,
    ``register_collectors``), each with the arguments it names, in load order."""
    return tuple(
        LifecycleHook(
            owners[impl.plugin_name],
            impl.function,
            MappingProxyType(
                {k: v for k, v in arguments[impl.plugin_name].items() if k in impl.argnames}
            ),
        )
        for impl in hook.get_hookimpls()  # in registration order (pluggy calls them reversed)
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
    arguments: Mapping[str, Mapping[str, Any]],
    versions: dict[str, str],
    owners: dict[str, str],
) -> dict[str, RegisteredAction]:
    """Call each plugin's hook separately, so every action is attributed to its plugin."""
    actions: dict[str, RegisteredAction] = {}
    for impl in manager.hook.register_actions.get_hookimpls():
        name = owners[impl.plugin_name]
        given = {k: v for k, v in arguments[impl.plugin_name].items() if k in impl.argnames}
        try:
            provided = impl.function(**given)
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

"""The hooks a plugin may implement, and the markers that tie implementations to them.

Every hook is called once per plugin, with that plugin's own settings, in this order:

1. ``register_settings`` (at load: ``openexec plugins`` and ``openexec actions`` run it too);
2. ``register_actions`` (at load, after the pack's settings are read);
3. ``register_collectors`` (once per worker, when the service exports metrics);
4. ``startup`` (once per worker, when it starts serving, after the registry is frozen);
5. ``shutdown`` (once per worker, when it stops).

Loading must change nothing outside the process: side effects (a directory to create, a file
to open) belong in ``startup``. An implementation may take any subset of a hook's arguments.
A hook no plugin implements costs nothing; an implementation of a hook not listed here stops
startup, naming its plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from openexec.actions import Action
    from openexec.pack_settings import PackSettings
    from openexec.settings import Settings

hookspec = pluggy.HookspecMarker("openexec")
hookimpl = pluggy.HookimplMarker("openexec")


@hookspec
def register_settings() -> type[PackSettings]:
    """Return the pack's settings model: a ``PackSettings`` subclass with an ``env_prefix``.

    The host reads it from the environment once, at startup, and passes the instance to the
    pack's other hooks as ``pack_settings``. A bad value, or a variable with the prefix that
    names no field, stops startup naming the variable. Packs without settings leave it out
    and get ``pack_settings=None``.
    """


@hookspec
def register_actions(settings: Settings, pack_settings: PackSettings | None) -> list[Action]:
    """Return the actions this plugin provides; called once, at load.

    ``settings`` are the host's, ``pack_settings`` the pack's own (``register_settings``).
    Build the handlers here and close them over what they need; do nothing outside the
    process (``openexec actions`` calls this too).
    """


@hookspec
def register_collectors(settings: Settings, pack_settings: PackSettings | None) -> list[Collector]:
    """Return prometheus-client collectors (objects with a ``collect()`` that yields metric
    families) for what the pack alone knows, such as the exec pack's sessions by state.

    ``GET /metrics`` calls each ``collect()`` at every scrape, in the worker that serves it, so
    read shared state there (files, the pack's own service), not one worker's memory. Name the
    metrics ``openexec_<pack>_...`` and give labels bounded values only (never ids); called
    only when ``OPENEXEC_METRICS`` is on, when the app is built.
    """


@hookspec
def startup(settings: Settings, pack_settings: PackSettings | None) -> None:
    """Prepare what the handlers need (create a directory, check a tool is there); called
    once per worker process as it starts serving, after the registry is frozen.

    An exception stops the service's startup with a message naming the plugin.
    """


@hookspec
def shutdown(settings: Settings, pack_settings: PackSettings | None) -> None:
    """Release what ``startup`` took; called once per worker process as it stops, after the
    last request. An exception is logged, and the other plugins still shut down."""

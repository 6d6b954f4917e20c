"""The hooks a plugin may implement, and the markers that tie implementations to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from openexec.actions import Action
    from openexec.settings import Settings

hookspec = pluggy.HookspecMarker("openexec")
hookimpl = pluggy.HookimplMarker("openexec")


@hookspec
def register_actions(settings: Settings) -> list[Action]:
    """Return the actions this plugin provides; called once, at startup.

    An implementation may omit the ``settings`` argument; packs that need configuration
    (the files pack's root, say) take it and close their handlers over what they need.
    """

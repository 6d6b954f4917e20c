"""OpenExec files pack: seven file actions confined to ``OPENEXEC_FILES_ROOT``.

Paths are resolved one component at a time through directory descriptors with ``O_NOFOLLOW``;
symbolic links, FIFOs, sockets, devices and multiply-linked files are refused (see README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import PositiveInt

from openexec import Action, PackSettings, hookimpl
from openexec_files.actions import FilesPack

ROOT_MODE = 0o700


class FilesSettings(PackSettings):
    """``OPENEXEC_FILES_ROOT``: the directory every path is confined to (created 0700 at
    startup). ``OPENEXEC_FILES_MAX_BYTES``: the largest file read or written."""

    env_prefix = "OPENEXEC_FILES_"
    root: Path = Path("openexec-files")
    max_bytes: PositiveInt = 10_485_760


@hookimpl
def register_settings() -> type[FilesSettings]:
    return FilesSettings


@hookimpl
def register_actions(pack_settings: FilesSettings) -> list[Action]:
    """Offer the actions, bound to the root by absolute path: a later change of working
    directory cannot move it. Nothing is created here (``openexec actions`` calls this)."""
    return FilesPack(pack_settings.root.absolute(), pack_settings.max_bytes).actions()


@hookimpl
def startup(pack_settings: FilesSettings) -> None:
    """Create the root (0700) if it is missing."""
    os.makedirs(pack_settings.root.absolute(), mode=ROOT_MODE, exist_ok=True)

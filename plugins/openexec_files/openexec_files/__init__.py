"""OpenExec files pack: file actions confined to ``OPENEXEC_FILES_ROOT``, and
``files.apply_patch``, all or nothing through a journal in ``OPENEXEC_FILES_STATE``.

Paths are resolved one component at a time through directory descriptors with ``O_NOFOLLOW``;
symbolic links, FIFOs, sockets, devices and multiply-linked files are refused (see README.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import PositiveInt

from openexec import Action, PackSettings, hookimpl
from openexec_files.actions import FilesPack
from openexec_files.journal import Journal

ROOT_MODE = 0o700
logger = logging.getLogger("openexec.files")


class FilesSettings(PackSettings):
    """``OPENEXEC_FILES_ROOT``: the directory every path is confined to (created 0700 at
    startup). ``OPENEXEC_FILES_MAX_BYTES``: the largest file read or written.
    ``OPENEXEC_FILES_STATE``: the patch journal (created 0700; never inside the root)."""

    env_prefix = "OPENEXEC_FILES_"
    root: Path = Path("openexec-files")
    max_bytes: PositiveInt = 10_485_760
    state: Path = Path("openexec-files-state")


@hookimpl
def register_settings() -> type[FilesSettings]:
    return FilesSettings


@hookimpl
def register_actions(pack_settings: FilesSettings) -> list[Action]:
    """Offer the actions, bound to the root by absolute path: a later change of working
    directory cannot move it. Nothing is created here (``openexec actions`` calls this)."""
    return FilesPack(
        pack_settings.root.absolute(),
        pack_settings.max_bytes,
        state=pack_settings.state.absolute(),
    ).actions()


@hookimpl
def startup(pack_settings: FilesSettings) -> None:
    """Create the root and the state directory (0700) if they are missing, and finish or undo
    any patch a crash interrupted (``journal.py``) before a request can see its files."""
    root, state = pack_settings.root.absolute(), pack_settings.state.absolute()
    if state.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"OPENEXEC_FILES_STATE {state} is inside OPENEXEC_FILES_ROOT {root}")
    os.makedirs(root, mode=ROOT_MODE, exist_ok=True)
    os.makedirs(state, mode=ROOT_MODE, exist_ok=True)
    for line in Journal(root, state).recover():
        logger.warning("files.apply_patch journal %s", line)

"""OpenExec files pack: seven file actions confined to ``OPENEXEC_FILES_ROOT``.

Paths are resolved one component at a time through directory descriptors with ``O_NOFOLLOW``;
symbolic links, FIFOs, sockets, devices and multiply-linked files are refused (see README.md).
"""

from __future__ import annotations

import os

from openexec import Action, hookimpl
from openexec.settings import Settings
from openexec_files.actions import FilesPack

ROOT_MODE = 0o700


@hookimpl
def register_actions(settings: Settings) -> list[Action]:
    """Create the root (0700) if missing and offer the actions, bound to it by absolute path.

    The path is made absolute now so a later change of working directory cannot move the root.
    """
    root = settings.files_root.absolute()
    os.makedirs(root, mode=ROOT_MODE, exist_ok=True)
    return FilesPack(root, settings.files_max_bytes).actions()

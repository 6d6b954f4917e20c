"""``files.apply_patch``: every operation checked and computed before anything is written, then
committed all or nothing through the journal (``journal.py``).

While it runs it holds the structure lock exclusively (no other creation or move runs) and the
lock of every existing directory it touches (no write or delete there runs), so what it checked
is still true when it commits.
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openexec_files.errors import failure
from openexec_files.journal import Journal, Placement, Plan, Removal
from openexec_files.models import ApplyPatchInput
from openexec_files.patch import HunkMismatch, Operation, added_text, apply_hunks, parse
from openexec_files.paths import split
from openexec_files.resolve import (
    EXCLUSIVE,
    changing,
    check_addressable,
    lstat_at,
    open_dir,
    open_file,
    open_subdir,
    read_bounded,
)
from openexec_files.walk import check_depth

FILE_MODE = 0o600


@dataclass
class PatchApplier:
    root: Path
    max_bytes: int
    max_depth: int
    journal: Journal

    def apply(self, payload: ApplyPatchInput) -> dict[str, Any]:
        operations = parse(payload.patch)
        touched = [split(path)[0] for op in operations for path in (op.path, op.move_to) if path]
        prefixes = sorted({tuple(self._existing_prefix(parts)) for parts in touched})
        with changing(self.root, *map(list, prefixes), structure=EXCLUSIVE):
            plan = Plan([], [], [])
            result: dict[str, Any] = {"added": [], "modified": [], "deleted": [], "moved": []}
            shown: dict[str, bytes] = {}
            for operation in operations:
                self._plan(operation, payload.base_sha256, plan, result, shown)
            for path in sorted(set(shown) & {"/".join(parts) for parts in plan.made}):
                raise failure("exists", path, "the patch makes it both a file and a directory")
            self.journal.commit(plan)
        result = {key: sorted(value, key=str) for key, value in result.items()}
        result["moved"] = sorted(result["moved"], key=lambda m: (m["src"], m["dst"]))
        result["files"] = [
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in sorted(shown.items())
        ]
        return result

    def _existing_prefix(self, parts: list[str]) -> list[str]:
        """The longest leading part of ``parts`` that is a directory; a link or a file on the
        way is refused now."""
        with ExitStack() as stack:
            fd = stack.enter_context(open_dir(self.root, []))
            for depth, name in enumerate(parts):
                shown = "/".join(parts[: depth + 1])
                st = lstat_at(fd, name, shown)
                if st is None:
                    return parts[:depth]
                check_addressable(st, shown)
                if not stat.S_ISDIR(st.st_mode):
                    raise failure("not_a_directory", shown, "is not a directory")
                fd = open_subdir(fd, name, shown)
                stack.callback(os.close, fd)
        return parts

    def _plan(
        self,
        operation: Operation,
        pins: dict[str, str],
        plan: Plan,
        result: dict[str, list],
        shown: dict[str, bytes],
    ) -> None:
        path = operation.path
        if operation.kind == "add":
            content = added_text(operation.lines).encode()
            self._destination(path, content, plan, FILE_MODE)
            result["added"].append(path)
            shown[path] = content
            return
        old, mode = self._read(path, pins.get(path))
        parents, name = split(path)
        if operation.kind == "delete":
            plan.removals.append(Removal(parents, name))
            result["deleted"].append(path)
            return
        new = self._edited(path, old, operation) if operation.hunks else old
        if len(new) > self.max_bytes:
            raise failure("too_large", path, f"would be larger than {self.max_bytes} bytes")
        if operation.move_to is None:
            plan.placements.append(Placement(parents, name, new, replace=True, mode=mode))
            result["modified"].append(path)
            shown[path] = new
            return
        self._destination(operation.move_to, new, plan, mode)
        plan.removals.append(Removal(parents, name))
        result["moved"].append({"src": path, "dst": operation.move_to})
        shown[operation.move_to] = new

    @staticmethod
    def _edited(path: str, old: bytes, operation: Operation) -> bytes:
        try:
            text = old.decode("utf-8")
        except UnicodeDecodeError:
            raise failure("not_utf8", path, "is not UTF-8 text, which a hunk edits") from None
        try:
            return apply_hunks(text, operation.hunks).encode()
        except HunkMismatch as mismatch:
            raise failure("patch_failed", path, str(mismatch)) from None

    def _read(self, path: str, pin: str | None) -> tuple[bytes, int]:
        """An existing regular file's content and permissions, checked against its pin."""
        parents, name = split(path)
        with open_dir(self.root, parents) as dir_fd, open_file(dir_fd, name, path) as (fd, st):
            if st.st_size > self.max_bytes:
                raise failure("too_large", path, f"is larger than {self.max_bytes} bytes")
            data = read_bounded(fd, self.max_bytes, path)
        if pin is not None and hashlib.sha256(data).hexdigest() != pin:
            raise failure("precondition_failed", path, "its SHA-256 is not base_sha256's")
        return data, st.st_mode & 0o777  # as files.write: never setuid, setgid or sticky

    def _destination(self, path: str, content: bytes, plan: Plan, mode: int) -> None:
        """Plan ``content`` at ``path``, which must not exist; missing parents are made."""
        check_depth(path, self.max_depth)
        if len(content) > self.max_bytes:
            raise failure("too_large", path, f"would be larger than {self.max_bytes} bytes")
        parents, name = split(path)
        existing = self._existing_prefix(parents)
        if len(existing) == len(parents):
            with open_dir(self.root, parents) as dir_fd:
                st = lstat_at(dir_fd, name, path)
            if st is not None:
                check_addressable(st, path)
                raise failure("exists", path, "already exists")
        for depth in range(len(existing) + 1, len(parents) + 1):
            if parents[:depth] not in plan.made:
                plan.made.append(parents[:depth])
        plan.placements.append(Placement(parents, name, content, replace=False, mode=mode))

"""The file actions; results are deterministic: no timestamps, no inode numbers, sorted."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from openexec import Action, ActionError, Context
from openexec_files.apply_patch import PatchApplier
from openexec_files.atomic import publish, rename_noreplace
from openexec_files.errors import failure, fs_error, shorten
from openexec_files.journal import Journal
from openexec_files.models import (
    ApplyPatchInput,
    DeleteInput,
    ListInput,
    MkdirInput,
    MoveInput,
    ReadInput,
    StatInput,
    WriteInput,
)
from openexec_files.paths import ROOT, split
from openexec_files.resolve import (
    DIR_MODE,
    EXCLUSIVE,
    SHARED,
    changing,
    check_addressable,
    check_file,
    check_single_link,
    lstat_at,
    open_dir,
    open_file,
    read_bounded,
)
from openexec_files.walk import (
    MAX_DEPTH,
    check_depth,
    empty_tree,
    list_tree,
    reaches_beyond,
)

FILE_MODE = 0o600

Result = dict[str, Any]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FilesPack:
    """File actions confined to ``root``; every call opens the root afresh and walks down by fd.

    ``max_depth`` is the one depth limit of every action (see ``openexec_files.walk``): nothing
    is created deeper, and list and recursive delete walk anything up to it.
    """

    def __init__(
        self, root: Path, max_bytes: int, max_depth: int = MAX_DEPTH, state: Path | None = None
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.patcher = (
            PatchApplier(root, max_bytes, max_depth, Journal(root, state))
            if state is not None
            else None
        )

    def actions(self) -> list[Action]:
        return [
            Action(
                "files.read",
                self.read_file,
                ReadInput,
                "Read a regular file below the files root as UTF-8 text or base64.",
            ),
            Action(
                "files.write",
                self.write_file,
                WriteInput,
                "Atomically create, overwrite or append to a file; optional compare-and-swap.",
            ),
            Action(
                "files.list",
                self.list_dir,
                ListInput,
                "List a directory, optionally recursively, sorted by path; never follows links.",
            ),
            Action(
                "files.stat",
                self.stat_path,
                StatInput,
                "Say whether a path exists, its type and size, and a file's SHA-256.",
            ),
            Action(
                "files.delete",
                self.delete_path,
                DeleteInput,
                "Delete a file, an empty directory, or with recursive a whole directory tree.",
            ),
            Action(
                "files.mkdir",
                self.make_dir,
                MkdirInput,
                "Create a directory (mode 0700), optionally with its missing parents.",
            ),
            Action(
                "files.move",
                self.move_path,
                MoveInput,
                "Rename a file or directory within the files root; never replaces unless asked.",
            ),
            *self._patch_action(),
        ]

    def _patch_action(self) -> list[Action]:
        """``files.apply_patch`` needs the journal's directory: offered when there is one."""
        if self.patcher is None:
            return []
        return [
            Action(
                "files.apply_patch",
                self.apply_patch,
                ApplyPatchInput,
                "Apply a '*** Begin Patch' multi-file patch, all or nothing.",
            )
        ]

    def apply_patch(self, payload: ApplyPatchInput, ctx: Context) -> Result:
        assert self.patcher is not None
        return self.patcher.apply(payload)

    def _too_large(self, path: str) -> ActionError:
        return failure("too_large", path, f"would be larger than {self.max_bytes} bytes")

    def read_file(self, payload: ReadInput, ctx: Context) -> Result:
        parents, name = split(payload.path)
        with (
            open_dir(self.root, parents) as dir_fd,
            open_file(dir_fd, name, payload.path) as (fd, st),
        ):
            if st.st_size > self.max_bytes:
                raise self._too_large(payload.path)
            data = read_bounded(fd, self.max_bytes, payload.path)
        if payload.encoding == "base64":
            content = base64.b64encode(data).decode("ascii")
        else:
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                raise failure(
                    "not_utf8", payload.path, "is not UTF-8 text; read it with encoding base64"
                ) from None
        return {
            "path": payload.path,
            "encoding": payload.encoding,
            "content": content,
            "size": len(data),
            "sha256": sha256_hex(data),
        }

    def write_file(self, payload: WriteInput, ctx: Context) -> Result:
        path = payload.path
        data = payload.data()
        if len(data) > self.max_bytes:
            raise self._too_large(path)
        check_depth(path, self.max_depth)
        parents, name = split(path)
        with changing(self.root, parents, structure=SHARED, create=payload.parents) as [dir_fd]:
            current = lstat_at(dir_fd, name, path)
            if current is None:
                if payload.if_sha256 is not None:
                    raise failure("precondition_failed", path, "does not exist")
                # Only overwrite may replace a file that appears meanwhile; create and append
                # must not clobber content they never saw.
                replace = payload.mode == "overwrite"
                publish(dir_fd, name, data, replace=replace, perm=FILE_MODE, shown=path)
                return {
                    "path": path,
                    "size": len(data),
                    "sha256": sha256_hex(data),
                    "created": True,
                }
            check_addressable(current, path)
            if payload.mode == "create":
                raise failure("exists", path, "already exists (use mode overwrite)")
            check_file(current, path)
            check_single_link(current, path)
            if payload.mode == "append" or payload.if_sha256 is not None:
                with open_file(dir_fd, name, path) as (fd, _):
                    old = read_bounded(fd, self.max_bytes, path)
                if payload.if_sha256 is not None and sha256_hex(old) != payload.if_sha256:
                    raise failure("precondition_failed", path, "content has changed")
                if payload.mode == "append":
                    data = old + data
            if len(data) > self.max_bytes:
                raise self._too_large(path)
            perm = current.st_mode & 0o777  # keep the replaced file's permission bits
            publish(dir_fd, name, data, replace=True, perm=perm, shown=path)
        return {"path": path, "size": len(data), "sha256": sha256_hex(data), "created": False}

    def list_dir(self, payload: ListInput, ctx: Context) -> Result:
        """One descriptor walk from the listed directory, in the order of whole paths, stopping
        at ``max_entries``: linear in what it returns (see ``walk.list_tree``)."""
        parts = [] if payload.path == ROOT else payload.path.split("/")
        with open_dir(self.root, parts) as fd:
            entries, truncated = list_tree(
                fd,
                "/".join(parts),
                recursive=payload.recursive,
                max_entries=payload.max_entries,
                max_depth=self.max_depth,
            )
        return {"path": payload.path, "entries": entries, "truncated": truncated}

    def stat_path(self, payload: StatInput, ctx: Context) -> Result:
        path = payload.path
        missing = {"path": path, "exists": False, "type": None, "size": None, "sha256": None}
        parents, name = split(path)
        try:
            with open_dir(self.root, parents) as dir_fd:
                st = lstat_at(dir_fd, name, path)
                if st is None:
                    return missing
                check_addressable(st, path)
                if stat.S_ISDIR(st.st_mode):
                    return {**missing, "exists": True, "type": "directory"}
                digest = None
                # The hash needs the content: withheld where read would refuse it.
                if st.st_nlink == 1 and st.st_size <= self.max_bytes:
                    with open_file(dir_fd, name, path) as (fd, _):
                        digest = sha256_hex(read_bounded(fd, self.max_bytes, path))
        except ActionError as err:
            if err.code == "not_found":  # a missing parent, or the entry vanished meanwhile
                return missing
            raise
        return {"path": path, "exists": True, "type": "file", "size": st.st_size, "sha256": digest}

    def delete_path(self, payload: DeleteInput, ctx: Context) -> Result:
        path = payload.path
        parents, name = split(path)
        with changing(self.root, parents) as [dir_fd]:
            st = lstat_at(dir_fd, name, path)
            if st is None:
                raise failure("not_found", path, "does not exist")
            check_addressable(st, path)
            try:
                if stat.S_ISDIR(st.st_mode):
                    if payload.if_sha256 is not None:
                        raise failure("is_a_directory", path, "if_sha256 needs a file")
                    if payload.recursive:
                        empty_tree(dir_fd, name, path, max_depth=self.max_depth)
                    os.rmdir(name, dir_fd=dir_fd)
                else:
                    if payload.if_sha256 is not None:
                        with open_file(dir_fd, name, path) as (fd, _):
                            current = sha256_hex(read_bounded(fd, self.max_bytes, path))
                        if current != payload.if_sha256:
                            raise failure("precondition_failed", path, "content has changed")
                    os.unlink(name, dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as exc:
                raise fs_error(exc, path) from None
        return {"path": path, "deleted": True}

    def make_dir(self, payload: MkdirInput, ctx: Context) -> Result:
        path = payload.path
        check_depth(path, self.max_depth)
        parents, name = split(path)
        with changing(self.root, parents, structure=SHARED, create=payload.parents) as [dir_fd]:
            try:
                os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
                os.fsync(dir_fd)
            except FileExistsError:
                st = lstat_at(dir_fd, name, path)
                if st is not None:
                    check_addressable(st, path)
                if payload.exist_ok and st is not None and stat.S_ISDIR(st.st_mode):
                    return {"path": path, "created": False}
                raise failure("exists", path, "already exists") from None
            except OSError as exc:
                raise fs_error(exc, path) from None
        return {"path": path, "created": True}

    def move_path(self, payload: MoveInput, ctx: Context) -> Result:
        """A directory moved deeper than it was is walked first (``walk.reaches_beyond``), so
        a move never nests anything beyond ``max_depth``; moving up or sideways needs no walk.
        Both judgements hold because no other move or creation runs meanwhile (the structure
        lock, see ``resolve.changing``)."""
        src, dst = payload.src, payload.dst
        check_depth(dst, self.max_depth)
        (src_parents, src_name), (dst_parents, dst_name) = split(src), split(dst)
        with changing(self.root, src_parents, dst_parents, structure=EXCLUSIVE) as [src_fd, dst_fd]:
            st = lstat_at(src_fd, src_name, src)
            if st is None:
                raise failure("not_found", src, "does not exist")
            check_addressable(st, src)
            deeper_by = len(dst_parents) - len(src_parents)
            if (
                stat.S_ISDIR(st.st_mode)
                and deeper_by > 0
                and reaches_beyond(
                    src_fd, src_name, src, levels=self.max_depth - len(dst_parents) - 1
                )
            ):
                raise failure(
                    "too_deep",
                    dst,
                    f"moving {shorten(src)} there would put entries more than "
                    f"{self.max_depth} levels below the root",
                )
            target = lstat_at(dst_fd, dst_name, dst)
            if target is not None:
                check_addressable(target, dst)
                if not payload.overwrite:
                    raise failure("exists", dst, "already exists (use overwrite)")
            try:
                if payload.overwrite:
                    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                else:
                    rename_noreplace(src_fd, src_name, dst_fd, dst_name)
                os.fsync(dst_fd)
                os.fsync(src_fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise failure("invalid_move", src, "cannot be moved into itself") from None
                raise fs_error(exc, src if exc.errno == errno.ENOENT else dst) from None
        return {"src": src, "dst": dst}

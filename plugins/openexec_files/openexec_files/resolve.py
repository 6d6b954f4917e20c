"""Reach entries below the root one component at a time, through directory descriptors.

Each component is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a symbolic
link anywhere below the root -- including one swapped in while a request runs -- is refused, never
followed, and no absolute path under the root is ever built or re-resolved (no realpath-then-open).
The root itself is opened by its configured path, so an operator may make the root a link.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from openexec import ActionError
from openexec_files.errors import failure, fs_error, refusal

DIR_MODE = 0o700
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat check cannot block the open.
# O_NOCTTY: a terminal device swapped in never becomes the process's controlling terminal.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
READ_CHUNK = 1 << 20


@contextmanager
def open_dir(root: Path | int, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    """Yield a descriptor of the directory ``root/parts...``; with ``create``, make missing ones.

    ``root`` is the root's path, or a descriptor of it (from ``changing``), which stays open.
    """
    fd = _open_root(root) if isinstance(root, Path) else os.open(".", DIR_FLAGS, dir_fd=root)
    try:
        for depth, name in enumerate(parts, start=1):
            child = _open_or_make_subdir(fd, name, "/".join(parts[:depth]), create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_root(root: Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise ActionError(
            "root_unavailable", "the files root is missing or not a directory"
        ) from None


def _open_or_make_subdir(dir_fd: int, name: str, shown: str, create: bool) -> int:
    try:
        return open_subdir(dir_fd, name, shown)
    except ActionError as err:
        if not (create and err.code == "not_found"):
            raise
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except FileExistsError:
        pass  # made concurrently: opening it below decides whether it is usable
    except OSError as exc:
        raise fs_error(exc, shown) from None
    return open_subdir(dir_fd, name, shown)


def open_subdir(dir_fd: int, name: str, shown: str) -> int:
    """Open directory ``name`` inside ``dir_fd``; a link or any non-directory there is refused."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _explain(exc, dir_fd, name, shown) from None


def _explain(exc: OSError, dir_fd: int, name: str, shown: str) -> ActionError:
    """The real reason an open failed: O_NOFOLLOW/O_DIRECTORY report a link as ELOOP or ENOTDIR."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return fs_error(exc, shown)
    return refusal(st.st_mode, shown) or fs_error(exc, shown)


def lstat_at(dir_fd: int, name: str, shown: str) -> os.stat_result | None:
    """The entry's own status (a link is described, not followed), or None if there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise fs_error(exc, shown) from None


def check_addressable(st: os.stat_result, shown: str) -> None:
    """Refuse what no action may address by name: links, FIFOs, sockets and devices."""
    why = refusal(st.st_mode, shown)
    if why is not None:
        raise why


def check_file(st: os.stat_result, shown: str) -> None:
    """Refuse anything but a regular file: what ``check_addressable`` refuses, and directories."""
    check_addressable(st, shown)
    if stat.S_ISDIR(st.st_mode):
        raise failure("is_a_directory", shown, "is a directory")


def check_single_link(st: os.stat_result, shown: str) -> None:
    """Refuse a file with other hard links: one of them may be a name outside the root."""
    if st.st_nlink > 1:
        raise failure(
            "hard_link_refused",
            shown,
            f"has {st.st_nlink} hard links; its content is neither read nor written",
        )


@contextmanager
def open_file(dir_fd: int, name: str, shown: str) -> Iterator[tuple[int, os.stat_result]]:
    """Yield a read descriptor and status of the single-link regular file ``name``.

    The lstat before opening means a FIFO or device is normally never opened at all; the fstat
    after opening catches one swapped in between.
    """
    before = lstat_at(dir_fd, name, shown)
    if before is None:
        raise failure("not_found", shown, "does not exist")
    check_file(before, shown)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _explain(exc, dir_fd, name, shown) from None
    try:
        st = os.fstat(fd)
        check_file(st, shown)
        check_single_link(st, shown)
        yield fd, st
    finally:
        os.close(fd)


def read_bounded(fd: int, limit: int, shown: str) -> bytes:
    """Read the whole file, refusing it as soon as it proves larger than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := os.read(fd, min(READ_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise failure("too_large", shown, f"is larger than {limit} bytes")
    except OSError as exc:
        raise fs_error(exc, shown) from None
    return b"".join(chunks)


SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX


@contextmanager
def changing(
    root: Path, *dirs: Sequence[str], structure: int | None = None, create: bool = False
) -> Iterator[list[int]]:
    """Yield descriptors of the directories ``dirs`` (component lists), locked for a change.

    Two kinds of ``flock`` make this pack's own changes -- from any thread or worker process --
    take turns where they must:

    * **Each directory changed** is locked exclusively, so a compare-and-swap cannot interleave
      with another write or delete there.
    * **The structure lock**, on the root directory, keeps depth checks true. Creations judge
      depth by counting a path's components, and a move also measures the tree it moves; both
      are right only if no move changes the tree between that check and the creation or
      rename. So ``structure=SHARED`` (creations: mkdir, write) and ``EXCLUSIVE`` (move) hold it
      from before anything is resolved until the action is done: creations run side by side,
      a move runs alone. Without it, two moves, or a move and a creation, could each pass its
      check and together nest entries deeper than list and delete walk. Deletes change no depth
      and reads nothing, so they do not take it.

    The root's own directory lock *is* the structure lock (flocks through two descriptors of one
    directory conflict, even within one thread), so a change directly in the root holds it
    exclusively. Locks are taken root first, then in inode order, so actions cannot deadlock.
    """
    mode = EXCLUSIVE if any(not parts for parts in dirs) else structure
    with ExitStack() as stack:
        root_fd = _open_root(root)
        stack.callback(os.close, root_fd)
        if mode is not None:
            stack.enter_context(locked(root_fd, mode=mode))
        fds = [stack.enter_context(open_dir(root_fd, parts, create=create)) for parts in dirs]
        # The root (also if mounted below itself) is locked as the structure or not at all:
        # locking it again through another descriptor would wait for this very action.
        root_id = identity(root_fd)
        stack.enter_context(locked(*(fd for fd in fds if identity(fd) != root_id)))
        yield fds


def identity(fd: int) -> tuple[int, int]:
    """Which directory (or file) ``fd`` is: its device and inode."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@contextmanager
def locked(*dir_fds: int, mode: int = EXCLUSIVE) -> Iterator[None]:
    """Hold flocks on these directories (one per directory, in inode order) meanwhile."""
    by_inode: dict[tuple[int, int], int] = {}
    for fd in dir_fds:
        by_inode.setdefault(identity(fd), fd)
    held: list[int] = []
    try:
        for key in sorted(by_inode):
            try:
                fcntl.flock(by_inode[key], mode)
            except OSError:
                raise ActionError("io_error", "could not lock a directory for writing") from None
            held.append(by_inode[key])
        yield
    finally:
        for fd in reversed(held):
            fcntl.flock(fd, fcntl.LOCK_UN)

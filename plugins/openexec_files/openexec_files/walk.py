"""Walking directory trees: one depth limit, a linear walk, a bounded number of descriptors.

**The limit.** No action creates, lists, moves or deletes an entry more than ``MAX_DEPTH``
(1024) levels below the root; an entry's depth is the number of components of its path
(``a/b`` is at depth 2). 1024 is twice the deepest path a request can name (1024 bytes of
``a/a/...`` is 512 components), so every path a payload may carry can be created, and only
``files.move`` -- which can put one deep tree under another -- can reach the limit. Everything the
pack can build, ``files.list`` and ``files.delete`` can therefore walk (and the structure lock,
``resolve.changing``, keeps two moves, or a move and a creation, from each passing its depth
check and together going deeper). A deeper tree, made by something other than the pack, is
refused with ``too_deep`` where the walk meets it -- a recursive delete, which is not atomic,
has by then removed what it met before -- and never costs more descriptors; moving its parts
towards the root, which needs no walk, takes it apart.

**Bounded answers.** Every listed entry carries its whole path, so a chain listed whole costs the
square of its depth: 1024 levels of 255-byte names would be 134 MB of paths. ``files.list``
therefore also stops, with ``truncated``, before the UTF-8 bytes of the paths it returns would
pass ``MAX_LIST_BYTES`` (4 MiB): four times what the deepest chain of one-letter names takes (its
1024 paths are 1 MiB), so only long names deep down meet it.

**Linear.** A walk starts from a directory descriptor, opens each subdirectory once relative to
its parent (``openat`` with ``O_NOFOLLOW``) and carries the relative path along; nothing is
re-resolved from the root per entry, and nothing recurses in Python.

**Descriptors.** Holding a descriptor per level would mean a thousand per walk, and handlers run
in threads side by side against a process limit that is often 1024. ``_Descent`` holds the
innermost ``SPAN`` (32) levels plus every ``SPAN``-th level: at most
``SPAN + MAX_DEPTH // SPAN + 1`` (65) descriptors, and one more while it opens the next level.
A level that was closed is reopened when the walk comes back up to it, by name, from the nearest
held level above it, with ``O_NOFOLLOW`` at each step, and must be the same directory (device
and inode) it was: a directory moved or replaced under a running walk ends it with
``not_found`` rather than let it continue somewhere else. Each reopening undoes one closing, and
a level is closed only when the walk opens one deeper, so reopening at most doubles the opens:
the walk stays linear. (Going up through ``..`` would need no reopening, but could leave the
root if a directory were moved out of it meanwhile; names from a held descriptor cannot.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from openexec import ActionError
from openexec_files.errors import failure, fs_error, kind
from openexec_files.paths import ROOT
from openexec_files.resolve import identity, lstat_at, open_subdir

Item = TypeVar("Item")

MAX_DEPTH = 1024
SPAN = 32
MAX_LIST_BYTES = 4 << 20  # bytes of paths in one files.list answer

Entry = dict[str, Any]


def shown_path(prefix: str, name: str) -> str:
    """A path for messages; names that are not UTF-8 on disk are shown with replacement marks."""
    printable = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return f"{prefix}/{printable}" if prefix else printable


def too_deep(shown: str, max_depth: int) -> ActionError:
    return failure("too_deep", shown, f"is more than {max_depth} levels below the root")


def check_depth(path: str, max_depth: int) -> None:
    """Refuse to create an entry at ``path`` if it would be deeper than the limit."""
    if path.count("/") + 1 > max_depth:
        raise too_deep(path, max_depth)


class _Descent:
    """The directories from a walk's top down to where it is, few of them open at once.

    Level 0 is the top, whose descriptor is always held (and closed by ``close`` only when
    ``owned``). Level ``i`` stays open while it is among the innermost ``SPAN`` levels or when
    ``i`` is a multiple of ``SPAN``; other levels are closed as the walk goes deeper and reopened,
    lazily, when it needs them again (see the module docstring).
    """

    def __init__(self, top_fd: int, shown: str, *, owned: bool) -> None:
        try:
            top_id = identity(top_fd)
        except OSError as exc:
            if owned:
                os.close(top_fd)
            raise fs_error(exc, shown or ROOT) from None
        self._fds: list[int | None] = [top_fd]
        self._names: list[str] = [""]
        self._shown: list[str] = [shown]
        self._ids: list[tuple[int, int]] = [top_id]
        self._owned = owned
        self._listing: Callable[[int, str], list[Any]] = lambda fd, shown: []
        self._pending: list[list[Any]] = []  # during visit: the items left, level by level

    @property
    def level(self) -> int:
        """How many levels below the top the walk is."""
        return len(self._fds) - 1

    @property
    def shown(self) -> str:
        """The path of the current directory, for results and messages."""
        return self._shown[-1]

    @property
    def name(self) -> str:
        """The current directory's name in its parent (empty at the top)."""
        return self._names[-1]

    @property
    def fd(self) -> int:
        """A descriptor of the current directory, reopened if it was closed."""
        fd = self._fds[-1]
        return self._reopen() if fd is None else fd

    def descend(self, name: str, shown: str) -> None:
        """Enter subdirectory ``name`` of the current directory (never through a link)."""
        fd = open_subdir(self.fd, name, shown)
        try:
            child_id = identity(fd)
        except OSError as exc:
            os.close(fd)
            raise fs_error(exc, shown) from None
        self._fds.append(fd)
        self._names.append(name)
        self._shown.append(shown)
        self._ids.append(child_id)
        leaving = self.level - SPAN  # no longer among the innermost SPAN levels
        if leaving > 0 and leaving % SPAN:
            old = self._fds[leaving]
            if old is not None:
                os.close(old)
                self._fds[leaving] = None

    def ascend(self) -> None:
        """Leave the current directory for its parent, which is reopened only when used."""
        fd = self._fds.pop()
        del self._names[-1], self._shown[-1], self._ids[-1]
        if fd is not None:
            os.close(fd)

    def visit(
        self,
        listing: Callable[[int, str], list[Item]],
        leave: Callable[[str, str], None] | None = None,
    ) -> Iterator[Item]:
        """Depth first: each item ``listing(fd, shown)`` gives for the top, and for every
        directory the caller ``enter``s on the way. A directory whose items are used up is
        left, and ``leave(name, shown)`` is then called with the parent current."""
        self._listing = listing
        pending = self._pending = [listing(self.fd, self.shown)]
        while pending:
            if pending[-1]:
                yield pending[-1].pop()
                continue
            pending.pop()
            if pending:
                name, shown = self.name, self.shown
                self.ascend()
                if leave is not None:
                    leave(name, shown)

    def enter(self, name: str, shown: str) -> None:
        """During ``visit``: descend into ``name``, whose items come next."""
        self.descend(name, shown)
        self._pending.append(self._listing(self.fd, shown))

    def _reopen(self) -> int:
        """Reopen the closed levels between the nearest open one and the current one."""
        held = self.level
        while self._fds[held] is None:
            held -= 1
        for i in range(held + 1, self.level + 1):
            parent = self._fds[i - 1]
            assert parent is not None
            fd = open_subdir(parent, self._names[i], self._shown[i])
            if identity(fd) != self._ids[i]:
                os.close(fd)
                raise failure("not_found", self._shown[i], "was moved or replaced during the walk")
            self._fds[i] = fd
        fd = self._fds[-1]
        assert fd is not None
        return fd

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None and (i or self._owned):
                os.close(fd)
        self._fds = [None] * len(self._fds)


def _names(fd: int, shown: str) -> list[str]:
    try:
        with os.scandir(fd) as it:
            return [entry.name for entry in it]
    except OSError as exc:
        raise fs_error(exc, shown or ROOT) from None


# files.list


def _listing(fd: int, prefix: str, recursive: bool) -> list[tuple[str, str, Entry | None]]:
    """The items of one directory, largest first (the walk pops the smallest off the end).

    Each entry ``n`` is an item keyed ``n``; with ``recursive``, each subdirectory ``n`` is also
    a second item keyed ``n/`` standing for all its descendants. Every path below ``n`` starts
    with ``prefix/n/``, so they are contiguous in the order of whole paths, and that block sits
    among the siblings exactly where the key ``n/`` does (``a`` < ``a.txt`` < ``a/...`` <
    ``a0``). Popping items in key order and expanding a block when it comes up therefore yields
    entries in the order of whole paths, with one directory open per level.

    Names that are not UTF-8 cannot be named in a request or a JSON result, so they are skipped.
    """
    items: list[tuple[str, str, Entry | None]] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                path = f"{prefix}/{entry.name}" if prefix else entry.name
                size = st.st_size if stat.S_ISREG(st.st_mode) else None
                listed = {"path": path, "type": kind(st.st_mode), "size": size}
                items.append((entry.name, entry.name, listed))
                if recursive and stat.S_ISDIR(st.st_mode):
                    items.append((entry.name + "/", entry.name, None))
    except OSError as exc:
        raise fs_error(exc, prefix or ROOT) from None
    items.sort(key=lambda item: item[0], reverse=True)
    return items


def list_tree(
    fd: int, prefix: str, *, recursive: bool, max_entries: int, max_depth: int
) -> tuple[list[Entry], bool]:
    """The first entries below directory ``fd`` (at path ``prefix``, "" for the root) in the
    order of whole paths -- at most ``max_entries`` of them, their paths at most
    ``MAX_LIST_BYTES`` -- and whether more exist. ``fd`` stays open."""
    base = prefix.count("/") + 1 if prefix else 0
    walk = _Descent(fd, prefix, owned=False)
    entries: list[Entry] = []
    path_bytes = 0
    try:
        for _, name, entry in walk.visit(lambda at, shown: _listing(at, shown, recursive)):
            if entry is not None:
                path_bytes += len(entry["path"].encode())
                if len(entries) == max_entries or path_bytes > MAX_LIST_BYTES:
                    return entries, True
                if base + walk.level + 1 > max_depth:
                    raise too_deep(entry["path"], max_depth)
                entries.append(entry)
                continue
            shown = f"{walk.shown}/{name}" if walk.shown else name
            try:
                walk.enter(name, shown)
            except ActionError as err:
                if err.code == "not_found":
                    continue  # removed while listing
                raise
        return entries, False
    finally:
        walk.close()


# files.delete and files.move


def empty_tree(parent_fd: int, name: str, shown: str, *, max_depth: int) -> None:
    """Remove everything inside directory ``name`` of ``parent_fd`` (at path ``shown``), which
    stays. Links and special files are unlinked as names, never followed; a file system mounted
    below is refused (``cross_device``), as is an entry deeper than ``max_depth``. Not atomic: a
    failure part-way leaves what was not yet removed."""
    base = shown.count("/") + 1
    walk = _Descent(open_subdir(parent_fd, name, shown), shown, owned=True)
    try:
        device = os.fstat(walk.fd).st_dev

        def remove_emptied(done: str, done_shown: str) -> None:
            try:
                os.rmdir(done, dir_fd=walk.fd)
            except OSError as exc:
                raise fs_error(exc, done_shown) from None

        for child in walk.visit(_names, leave=remove_emptied):
            child_shown = shown_path(walk.shown, child)
            st = lstat_at(walk.fd, child, child_shown)
            if st is None:
                continue
            if base + walk.level + 1 > max_depth:
                raise too_deep(child_shown, max_depth)
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != device:
                    raise failure("cross_device", child_shown, "is a mount point")
                walk.enter(child, child_shown)
                continue
            try:
                os.unlink(child, dir_fd=walk.fd)
            except OSError as exc:
                raise fs_error(exc, child_shown) from None
    finally:
        walk.close()


def reaches_beyond(parent_fd: int, name: str, shown: str, *, levels: int) -> bool:
    """Whether directory ``name`` of ``parent_fd`` (at path ``shown``) has an entry more than
    ``levels`` levels below it. Directories down to that depth are all visited, so the cost is
    linear in the size of that part of the tree."""
    walk = _Descent(open_subdir(parent_fd, name, shown), shown, owned=True)
    try:
        for child in walk.visit(_names):
            child_shown = shown_path(walk.shown, child)
            st = lstat_at(walk.fd, child, child_shown)
            if st is None:
                continue
            if walk.level + 1 > levels:
                return True
            if stat.S_ISDIR(st.st_mode):
                walk.enter(child, child_shown)
        return False
    finally:
        walk.close()

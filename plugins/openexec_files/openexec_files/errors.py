"""Turn what the disk says into ActionErrors, so no OSError reaches the host as internal_error.

Messages name only the caller's relative path: absolute paths under the root never leave the pack.
Every message that shows a path builds it with ``failure``, which shows at most the first and last
``PATH_EDGE`` characters: a message is signed into the receipt, and a path met deep in a tree can
be a quarter of a megabyte.
"""

from __future__ import annotations

import errno
import stat

from openexec import ActionError

_ERRNO_CODES: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("not_found", "does not exist"),
    errno.EEXIST: ("exists", "already exists"),
    errno.EISDIR: ("is_a_directory", "is a directory"),
    errno.ENOTDIR: ("not_a_directory", "is not a directory"),
    errno.ENOTEMPTY: ("not_empty", "is a directory that is not empty"),
    errno.ELOOP: ("symlink_refused", "is a symbolic link, which this pack never follows"),
    errno.EACCES: ("permission_denied", "permission denied"),
    errno.EPERM: ("permission_denied", "operation not permitted"),
    errno.ENOSPC: ("no_space", "no space left on the device"),
    errno.EDQUOT: ("no_space", "disk quota exceeded"),
    errno.EROFS: ("read_only", "is on a read-only file system"),
    errno.EXDEV: ("cross_device", "crosses a file system boundary"),
    errno.ENAMETOOLONG: ("name_too_long", "has a name too long for the file system"),
    errno.EBUSY: ("busy", "is in use (a mount point?)"),
    errno.EMLINK: ("too_many_links", "has too many links"),
}

PATH_EDGE = 100


def shorten(path: str) -> str:
    """``path`` for a message: whole if short, else its first and last ``PATH_EDGE`` characters."""
    if len(path) <= 2 * PATH_EDGE + 1:
        return path
    return f"{path[:PATH_EDGE]}…{path[-PATH_EDGE:]}"


def failure(code: str, path: str, what: str) -> ActionError:
    """The ActionError ``<path>: <what>``, the path shortened."""
    return ActionError(code, f"{shorten(path)}: {what}")


def fs_error(exc: OSError, path: str) -> ActionError:
    """The ActionError for an OSError met while acting on ``path``."""
    code, what = _ERRNO_CODES.get(exc.errno or 0, ("io_error", "could not be accessed"))
    if code == "io_error":
        what = f"{what} ({errno.errorcode.get(exc.errno or 0, 'unknown error')})"
    return failure(code, path, what)


def kind(mode: int) -> str:
    """The entry type named in results: file, directory, symlink or one of the special kinds."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char_device"
    if stat.S_ISBLK(mode):
        return "block_device"
    return "other"


def refusal(mode: int, path: str) -> ActionError | None:
    """Why the entry at ``path`` may not be addressed by name, or None for files and directories."""
    if stat.S_ISLNK(mode):
        return failure("symlink_refused", path, "is a symbolic link, which is never followed")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return failure(
            "not_regular_file", path, f"is a {kind(mode).replace('_', ' ')}, which is refused"
        )
    return None

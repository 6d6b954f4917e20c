"""Atomic publication of file content, and a rename that never replaces unless asked.

Content goes to a fresh temporary file beside the target, is fsynced, renamed onto the target and
the directory fsynced: a crash leaves the old content or the new one, never a torn file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable
from contextlib import suppress

from openexec_files.errors import failure, fs_error

TMP_PREFIX = ".openexec-tmp-"
TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
RENAME_NOREPLACE = 1


def _load_renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """Rename like rename(2), but fail with EEXIST rather than replace an existing ``dst``.

    Uses renameat2(RENAME_NOREPLACE), which decides atomically in the kernel. Where the kernel or
    file system lacks it, a file is linked then unlinked (link never replaces); a directory falls
    back to check-then-rename, which a concurrent creator of ``dst`` could still race.
    """
    if _renameat2 is not None:
        if (
            _renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), RENAME_NOREPLACE)
            == 0
        ):
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    if stat.S_ISDIR(os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_mode):
        with suppress(FileNotFoundError):
            os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir_fd)


def publish(dir_fd: int, name: str, data: bytes, *, replace: bool, perm: int, shown: str) -> None:
    """Make ``data`` the content of ``name`` in one step; without ``replace``, never clobber."""
    tmp = _write_temp(dir_fd, data, perm, shown)
    try:
        if replace:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            rename_noreplace(dir_fd, tmp, dir_fd, name)
        os.fsync(dir_fd)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise fs_error(exc, shown) from None


def _write_temp(dir_fd: int, data: bytes, perm: int, shown: str) -> str:
    """Create a uniquely named temporary file in ``dir_fd`` holding ``data``, fsynced."""
    for _ in range(16):
        tmp = TMP_PREFIX + secrets.token_hex(8)
        try:
            write_new(dir_fd, tmp, data, perm, shown)
        except FileExistsError:
            continue
        return tmp
    raise failure("io_error", shown, "could not create a temporary file beside it")


def write_new(dir_fd: int, name: str, data: bytes, perm: int, shown: str) -> None:
    """Create ``name`` in ``dir_fd`` (never an existing one, never through a link) holding
    ``data`` with permissions ``perm``, fsynced; on failure it is removed again. An existing
    ``name`` is a ``FileExistsError``, left to the caller; any other failure an ActionError."""
    try:
        fd = os.open(name, TMP_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        raise
    except OSError as exc:
        raise fs_error(exc, shown) from None
    try:
        os.fchmod(fd, perm)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise fs_error(exc, shown) from None
    finally:
        os.close(fd)

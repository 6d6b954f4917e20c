"""Finding, opening and hashing what a request names: the executable and its directory.

``argv[0]`` without a ``/`` is looked up in the policy's ``path`` only (never the request's or
the service's ``PATH``); an absolute one is taken as given; a relative one with a ``/`` is a
file in the workspace, below ``cwd``, reached without following links. The real path of the
file actually opened (read back from ``/proc/self/fd``) is what the policy matches, and that
same open file is hashed and handed to the supervisor, which executes it: there is no moment
at which another file could be swapped in under the checked name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from openexec.paths import check_path
from openexec_exec.policy import Policy

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
HASH_CHUNK = 1 << 20
SHEBANG_BYTES = 256


class Refused(Exception):
    """The request names something the policy or the workspace does not allow; the message
    says why. At validation it is a 422; at run time, ``policy_refused``."""


@dataclass
class Opened:
    """An executable opened for one run: the descriptor the supervisor will execute."""

    fd: int
    real_path: str
    interpreter: str | None  # the real path of a ``#!`` script's interpreter

    def sha256(self) -> str:
        return fd_sha256(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def fd_sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    fd = os.open(path, FILE_FLAGS)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


def open_cwd(workspace: Path, cwd: str) -> int:
    """A descriptor of ``workspace/cwd``, reached one component at a time with
    ``O_NOFOLLOW``: a link anywhere below the workspace is refused, never followed."""
    try:
        fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise Refused("the workspace is missing or not a directory") from None
    for part in [] if cwd == "." else cwd.split("/"):
        try:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            reason = _why(exc, fd, part)
            os.close(fd)
            raise Refused(f"cwd {cwd!r}: {part!r} {reason}") from None
        os.close(fd)
        fd = child
    return fd


def _why(exc: OSError, dir_fd: int, name: str) -> str:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return (
            "does not exist" if exc.errno == errno.ENOENT else (exc.strerror or "cannot be opened")
        )
    if stat.S_ISLNK(mode):
        return "is a symbolic link (links are never followed)"
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    return exc.strerror or "cannot be opened"


def open_executable(policy: Policy, workspace: Path, cwd: str, argv0: str) -> Opened:
    """Open what ``argv0`` names and check it is an executable regular file; the caller
    matches the policy against its real path and closes it."""
    if "/" not in argv0:
        fd = _open_from_path(policy, argv0)
    elif argv0.startswith("/"):
        fd = _open_file(argv0, argv0)
    else:
        fd = _open_in_workspace(workspace, cwd, argv0.removeprefix("./"))
    try:
        real_path = os.readlink(f"/proc/self/fd/{fd}")
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise Refused(f"{argv0!r} is not a regular file")
        if not status.st_mode & 0o111:
            raise Refused(f"{argv0!r} ({real_path}) is not executable")
        interpreter = _interpreter(os.pread(fd, SHEBANG_BYTES, 0), argv0)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, real_path, interpreter)


def _open_from_path(policy: Policy, name: str) -> int:
    for directory in policy.path:
        try:
            fd = os.open(os.path.join(directory, name), FILE_FLAGS)
        except OSError:
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
    raise Refused(f"{name!r} is not found in the policy's path ({':'.join(policy.path)})")


def _open_file(path: str, shown: str) -> int:
    try:
        return os.open(path, FILE_FLAGS)
    except OSError as exc:
        raise Refused(f"{shown!r} cannot be opened: {exc.strerror}") from None


def _open_in_workspace(workspace: Path, cwd: str, relative: str) -> int:
    try:
        check_path(relative)
    except ValueError as exc:
        raise Refused(f"executable {relative!r}: {exc}") from None
    *parents, name = relative.split("/")
    above = [] if cwd == "." else cwd.split("/")
    directory = open_cwd(workspace, "/".join(above + parents) or ".")
    try:
        return os.open(name, FILE_FLAGS | os.O_NOFOLLOW, dir_fd=directory)
    except OSError as exc:
        raise Refused(f"executable {relative!r} {_why(exc, directory, name)}") from None
    finally:
        os.close(directory)


def _interpreter(head: bytes, shown: str) -> str | None:
    """The real path of a ``#!`` line's interpreter, or None for a binary."""
    if not head.startswith(b"#!"):
        return None
    # As the kernel reads it (binfmt_script): spaces and tabs only separate, and the name
    # ends at the next space, tab, NUL or newline. Any other byte (\f, \v, \r) is part of
    # the name, so a name that does not start with "/" would be looked up from the cwd.
    line = head[2:].split(b"\n", 1)[0].split(b"\0", 1)[0].lstrip(b" \t")
    name = re.split(rb"[ \t]", line, maxsplit=1)[0]
    if not name.startswith(b"/"):
        raise Refused(f"{shown!r} starts with '#!' but names no absolute interpreter")
    interpreter = os.path.realpath(os.fsdecode(name))
    try:
        status = os.stat(interpreter)
    except OSError:
        raise Refused(f"{shown!r}: its interpreter {interpreter} does not exist") from None
    if not stat.S_ISREG(status.st_mode) or not status.st_mode & 0o111:
        raise Refused(f"{shown!r}: its interpreter {interpreter} is not an executable file")
    return interpreter

"""The bubblewrap sandbox (``sandbox = "bwrap"``): what a command can see and reach.

New user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network at all,
not even loopback, and no host process visible. The system directories are mounted read-only,
the workspace read-write at its own path, with a private ``/tmp`` and minimal ``/dev`` and
``/proc``. Nothing else of the host's file system is there: the state directory, the database
and the keys live outside those directories, and any that an operator put inside one of them
(``/etc/openexec/…``, say) is hidden under an empty mount. The command runs as an unprivileged
user with no capabilities and no new privileges, may not make user namespaces of its own, and
dies with its supervisor (``--die-with-parent``). The executable is the file the worker opened
and hashed, bound read-only over its real path (``--ro-bind-fd``), so the kernel runs that very
file; inside, ``argv[0]`` is that real path.

bwrap itself stays outside, in the command's process group, where a terminal's C-c (or a
``process.kill`` with INT) would reach it, and its death would take the sandbox down with
SIGKILL. So it runs with SIGINT, SIGQUIT and SIGTSTP ignored, and inside the sandbox coreutils'
``env --default-signal`` gives them back to the command before it runs. ``env`` would take a
path containing ``=`` for a variable, so such an executable is refused in the sandbox.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from openexec_exec.supervisor import EXE_FD

READ_ONLY_TREES = ("/usr", "/etc", "/opt")
TOP_LEVEL_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
RESTORE_SIGNALS = ("/usr/bin/env", "--default-signal=INT,QUIT,TSTP")


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot make its namespaces on this host."""


@functools.cache  # the host's layout: read once, not for every command
def system_mounts() -> tuple[str, ...]:
    arguments: list[str] = []
    for tree in READ_ONLY_TREES:
        arguments += ["--ro-bind-try", tree, tree]
    for path in TOP_LEVEL_LINKS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    return tuple(arguments)


def hidden_mounts(hidden: Sequence[Path]) -> list[str]:
    """Empty mounts over the service's own files that lie inside a mounted tree."""
    arguments: list[str] = []
    for path in hidden:
        if not any(str(path).startswith(tree + "/") for tree in READ_ONLY_TREES):
            continue  # not mounted at all
        if path.is_dir():
            arguments += ["--tmpfs", str(path)]
        elif path.exists():
            arguments += ["--ro-bind", "/dev/null", str(path)]
    return arguments


def bwrap_argv(
    bwrap: str,
    workspace: Path,
    cwd: str,
    real_path: str,
    args: Sequence[str],
    hidden: Sequence[Path],
    pty: bool,
    bind_executable: bool = True,
) -> list[str]:
    """The bwrap command line that runs ``real_path`` (open as descriptor ``EXE_FD``)."""
    executable = ["--ro-bind-fd", str(EXE_FD), real_path] if bind_executable else []
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--hostname",
        "openexec-sandbox",
        *system_mounts(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(workspace),
        str(workspace),
        *executable,
        *hidden_mounts(hidden),
        "--chdir",
        str(workspace if cwd == "." else workspace / cwd),
    ]
    if not pty:  # a new session keeps TIOCSTI away from any terminal; a PTY needs its own
        argv.append("--new-session")
    return [*argv, "--", *RESTORE_SIGNALS, real_path, *args]


def path_refusal(real_path: str) -> str | None:
    """Why ``real_path`` cannot run in the sandbox, or None."""
    if "=" in real_path:
        return f"{real_path} contains '=', which the sandbox cannot pass to env as a command"
    return None


def probe(bwrap: str, workspace: Path, user: tuple[int, int] | None) -> None:
    """Run ``true`` in the sandbox, as commands will run, or say why it cannot."""
    argv = bwrap_argv(bwrap, workspace, ".", "true", [], [], pty=False, bind_executable=False)
    identity = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False, **identity)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"{bwrap}: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise SandboxUnavailable(reason)

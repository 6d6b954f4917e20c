"""The supervisor: runs the exec pack's commands outside the uvicorn workers.

This file is the trust boundary between a worker, which decides what may run, and the process
that runs it. It uses the standard library only and is started as a script
(``python -I -S supervisor.py serve STATE_DIR``), so it loads none of the service's code,
settings or secrets.

Two roles, one file:

* **The daemon**, one per state directory (an exclusive ``flock`` on ``supervisor.lock``
  decides which). It listens on ``supervisor-v1.sock`` (0600, in the 0700 state directory;
  workers reach it through ``/proc/self/fd/<state dir>/``, whatever the directory's length) and
  keeps a few supervisors forked ahead, each waiting for a connection, replacing each one that
  takes one. It is single-threaded, so forking it is safe, and it is
  detached from the worker that started it (double fork, new session, cleared environment): a
  worker that dies or restarts takes no command with it. Idle for ``IDLE_EXIT_S`` with nothing
  running, it exits; the next command starts it again.
* **A supervisor**, one per command. It reads the launch request (JSON, the executable's and
  the directories' descriptors passed with ``SCM_RIGHTS``), answers ``accepted`` before it
  starts anything (so a worker that sees no ``accepted`` may safely try again), forks the
  command and then owns it: it holds the pipes or the PTY, writes every byte to the session's
  logs up to their bound, enforces the timeout (SIGTERM to the group and to every descendant,
  SIGKILL after the grace), and writes the final state to ``sessions/<id>/state.json``. It is
  a subreaper, so a descendant that calls ``setsid`` and is orphaned comes back to it, and it
  kills what is left when the command's main process ends. The command gets ``PDEATHSIG``
  (SIGKILL), so it dies with its supervisor.

The protocol is newline-delimited JSON on the connection. Worker to supervisor: the launch
request, then ``{"snapshot": true}`` whenever the worker wants the state so far. Supervisor to
worker: ``accepted``, then ``started`` (or ``failed``, with ``too_many_sessions`` when all of
the ``max_sessions`` slots are held), ``snapshot`` answers, and ``exited`` with the final
state. The worker may go away at any time: the supervisor carries on alone.

**Sessions.** Each supervisor also listens on ``sessions/<id>/session.sock``, where any worker
sends requests, one JSON line each, answered with one line: ``state``; ``poll`` (offsets per
stream, ``wait_ms``, ``limit``), answered once a stream has bytes past its offset, the command
ended, or the wait is over; ``input`` (parts: base64 bytes, or an unmodified cursor key whose
bytes follow the program's DECCKM), queued in arrival order and answered once written;
``kill`` (a signal and a grace), answered when the command has ended; ``remove``. Once the
command has ended the supervisor writes the final state and ``expires`` and exits, and workers
read the directory instead. The daemon removes sessions whose ``expires`` has passed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import gc
import hashlib
import json
import math
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import sys
import termios
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PROTOCOL = 1
SOCKET_NAME = f"supervisor-v{PROTOCOL}.sock"
LOCK_NAME = "supervisor.lock"
SESSIONS = "sessions"
SLOTS = "slots"  # max_sessions lock files: a supervisor holds one while it runs
SESSION_LOCK = "lock"  # in a session's directory: held by its supervisor while it lives
SESSION_SOCKET = "session.sock"  # in a session's directory: any worker's requests
STATE_NAME = "state.json"
EXPIRES_NAME = "expires"  # made when the session ends; its mtime is when it is removed
IDLE_EXIT_S = 60.0
SWEEP_S = 2.0
LOST_TTL_S = 1800.0  # a session whose supervisor vanished without recording its own TTL
MAKING_GRACE_S = 60.0  # a dot directory older than this, unlocked, was never finished
LEFTOVER_KILL_S = 5.0  # a process stuck in the kernel (D state) cannot be waited for forever
MAX_REQUEST_BYTES = 8 << 20
READ_CHUNK = 65536
EXE_FD, WORKSPACE_FD, EXEC_ERROR_FD = 3, 4, 5  # where the command finds what it was given
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


def now_rfc3339() -> str:
    seconds = time.time()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"
    )


def write_json_atomically(path: str, value: dict[str, Any], durable: bool) -> None:
    """Replace ``path`` whole; ``durable`` also survives a power cut (an fsync, milliseconds)."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, separators=(",", ":"))
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


# The daemon.


def serve(state_dir: str, ready_fd: int) -> int:
    """Become the daemon of ``state_dir``, or report that one already serves it."""
    lock_fd = os.open(
        os.path.join(state_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.write(ready_fd, b"running\n")
        return 0
    path = os.path.join(state_dir, SOCKET_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a daemon that died: we hold the lock, so it is ours to replace
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    os.chdir(state_dir)  # bound by its short name: a socket's path is limited to 107 bytes
    try:
        listener.bind(SOCKET_NAME)
    finally:
        os.umask(previous)
    listener.listen(256)
    if os.fork() != 0:  # the worker reaps this parent at once; the daemon is nobody's child
        os._exit(0)
    os.setsid()
    os.chdir("/")
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())  # who serves: for operators and tests
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    _redirect_stdio()
    Daemon(listener, lock_fd, state_dir).run()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # new workers start a fresh daemon; the backlog is reset
    return 0


class Daemon:
    """Keeps ``POOL`` supervisors forked ahead, each waiting in ``accept``: a command never
    waits for a fork of the daemon. A supervisor that takes a connection says so on the
    ``taken`` pipe, and the daemon forks its replacement."""

    POOL = 4

    def __init__(self, listener: socket.socket, lock_fd: int, state_dir: str) -> None:
        self.listener, self.lock_fd, self.state_dir = listener, lock_fd, state_dir
        self.taken_read, self.taken_write = os.pipe2(os.O_CLOEXEC)
        self.waiting: set[int] = set()
        self.busy: set[int] = set()
        self.pid = os.getpid()

    def run(self) -> None:
        gc.disable()  # a forked supervisor then writes to none of the daemon's pages to scan them
        gc.freeze()
        idle_since = next_sweep = time.monotonic()
        sessions_left = True
        while True:
            self._reap()
            while len(self.waiting) < self.POOL:
                self.waiting.add(self._fork_waiting())
            if time.monotonic() >= next_sweep:
                sessions_left = sweep(self.state_dir)
                next_sweep = time.monotonic() + SWEEP_S
            if self.busy or sessions_left:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                for pid in self.waiting:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # waiting in accept: nothing to lose
                return
            ready, _, _ = select.select([self.taken_read], [], [], 1.0)
            if ready:
                for pid in struct.unpack(
                    f"{len(data := os.read(self.taken_read, 4096)) // 4}i", data
                ):
                    self.waiting.discard(pid)
                    self.busy.add(pid)

    def _fork_waiting(self) -> int:
        pid = os.fork()
        if pid != 0:
            return pid
        code = 1
        try:
            os.close(self.lock_fd)  # a supervisor must not hold the daemon's lock once it is gone
            os.close(self.taken_read)
            # While it waits it dies with the daemon (a new daemon listens on a new socket);
            # once it has a command it outlives the daemon, like the command.
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.pid:
                return
            conn, _ = self.listener.accept()
            prctl(PR_SET_PDEATHSIG, 0)
            self.listener.close()
            os.write(self.taken_write, struct.pack("i", os.getpid()))
            os.close(self.taken_write)
            code = Supervisor(conn, self.state_dir).run()
        except BaseException:
            traceback.print_exc()  # to supervisor.log: os._exit would lose it
            sys.stderr.flush()
        finally:
            os._exit(code)

    def _reap(self) -> None:
        for pid, _ in reaped():
            self.waiting.discard(pid)
            self.busy.discard(pid)


def supervised(session_dir: str) -> bool:
    """Whether a live supervisor owns ``session_dir`` (it holds the directory's lock)."""
    try:
        fd = os.open(os.path.join(session_dir, SESSION_LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep(state_dir: str) -> bool:
    """Remove each finished session whose ``session_ttl_s`` has passed, with its logs. A
    session whose supervisor vanished without finishing (the machine lost power, say) is
    given its TTL from now. True while any session is left, running or kept."""
    now = time.time()
    left = False
    try:
        entries = list(os.scandir(os.path.join(state_dir, SESSIONS)))
    except FileNotFoundError:
        return False
    for entry in entries:
        try:
            expires: float | None = os.stat(os.path.join(entry.path, EXPIRES_NAME)).st_mtime
        except FileNotFoundError:
            expires = None
        except OSError:
            continue
        if expires is None:
            if supervised(entry.path):
                left = True
                continue
            if entry.name.startswith("."):  # a directory being made: its lock comes next
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > MAKING_GRACE_S:
                        shutil.rmtree(entry.path, ignore_errors=True)
                continue
            expires = now + _recorded_ttl(entry.path)
            with contextlib.suppress(OSError):
                mark_expiry(os.path.join(entry.path, EXPIRES_NAME), expires)
        if expires <= now:
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            left = True
    return left


def mark_expiry(marker: str, when: float) -> None:
    """The ``expires`` file: made if missing, its mtime set to when the sweep may remove."""
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    os.utime(marker, (when, when))


def _recorded_ttl(session_dir: str) -> float:
    try:
        with open(os.path.join(session_dir, STATE_NAME)) as handle:
            return float(json.load(handle)["ttl_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return LOST_TTL_S


def _redirect_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)


# One supervisor per command.


def read_stream(
    path: str, logged: int, total: int, tail: bytes, offset: int, limit: int
) -> tuple[int, bytes]:
    """A stream's bytes from ``offset``: from its log while the log has them, else from its
    tail. Returns where the bytes start, which is after ``offset`` when the bytes there are
    no longer kept (beyond ``max_log_bytes`` and older than the tail)."""
    offset = min(max(offset, 0), total)
    if offset < logged:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return offset, handle.read(min(limit, logged - offset))
    tail_start = total - len(tail)
    start = max(offset, tail_start)
    return start, bytes(tail[start - tail_start : start - tail_start + limit])


class Stream:
    """One output stream: every byte hashed, logged up to ``max_log``, its tail kept."""

    def __init__(self, path: str, max_log: int, max_tail: int) -> None:
        self.path, self.log = path, -1  # created with the first byte: most commands print little
        self.max_log, self.max_tail = max_log, max_tail
        self.total = self.logged = 0
        self.digest = hashlib.sha256()
        self.tail = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.digest.update(data)
        room = self.max_log - self.logged
        if room > 0:
            chunk = data[:room]
            try:
                if self.log < 0:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                    self.log = os.open(self.path, flags, 0o600)
                self.logged += os.write(self.log, chunk)
            except OSError:  # the disk is full: the log stops here, as at max_log_bytes
                self.max_log = self.logged
        self.tail += data
        if len(self.tail) > self.max_tail:
            del self.tail[: len(self.tail) - self.max_tail]

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        return read_stream(self.path, self.logged, self.total, self.tail, offset, limit)

    def state(self, tail: bool = True) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "bytes": self.total,
            "logged": self.logged,
            "sha256": self.digest.hexdigest(),
        }
        if tail:
            shown["tail"] = base64.b64encode(bytes(self.tail)).decode()
        return shown


class Peer:
    """One connection: the worker that launched the command, or any worker's request on the
    session's socket. Newline-delimited JSON both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.inbox = bytearray()
        self.outbox = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        if self.sock is not None:
            self.outbox += json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def messages(self) -> Iterator[dict[str, Any]]:
        while (end := self.inbox.find(b"\n")) >= 0:
            line = bytes(self.inbox[:end])
            del self.inbox[: end + 1]
            with contextlib.suppress(ValueError, RecursionError):  # not JSON, or too deep
                message = json.loads(line)
                if isinstance(message, dict):
                    yield message


@dataclass
class Waiter:
    """A request answered later: a poll waiting for output, a kill or input waiting to land."""

    peer: Peer
    request: dict[str, Any]
    deadline: float


MAX_OUTBOX_BYTES = 64 << 20  # answers a worker has not read: beyond, it is dropped
MAX_POLL_BYTES = 4 << 20  # per stream in one poll answer
FLUSH_WAIT_S = 5.0
MODE_SWITCH = re.compile(rb"\x1b\[\?([0-9;]*)([hl])")  # DECSET / DECRST
CURSOR_KEY_MODE = b"1"  # DECCKM: cursor keys send SS3 (ESC O) instead of CSI (ESC [)
INPUT_WAIT_S = 10.0  # a program that reads no input: answer with what it took so far
KILL_WAIT_S = 2.0  # beyond the grace, for the kernel to finish what SIGKILL began


class Supervisor:
    """Runs one command from launch request to final state (see the module docstring)."""

    def __init__(self, conn: socket.socket, state_dir: str) -> None:
        self.launcher: Peer | None = Peer(conn)
        self.peers: dict[int, Peer] = {conn.fileno(): self.launcher}
        self.state_dir = state_dir
        self.selector = selectors.DefaultSelector()
        self.streams: dict[int, Stream] = {}  # readable descriptor -> its stream
        self.named: dict[str, Stream] = {}
        self.pid = 0
        self.status: int | None = None
        self.finished = False  # the main process ended and its output is drained
        self.timed_out = False
        self.kill_at: float | None = None
        self.recorded_running = False
        self.removing = False
        self.waiters: list[Waiter] = []
        self.input = bytearray()  # queued for the command's stdin, in arrival order
        self.input_queued = self.input_written = 0  # totals, in bytes
        self.close_stdin_when_written = False
        self.stdin_writer: int | None = None
        self.application_cursor = False
        self.mode_carry = b""
        self.listener: socket.socket | None = None

    # Setup.

    def run(self) -> int:
        for number in (signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL if number == signal.SIGCHLD else signal.SIG_IGN)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        request, fds = self._read_request()
        if request is None:
            return 1
        self._send({"event": "accepted"})
        self._flush_blocking()
        self.spec = request
        if not self._take_slot():
            message = f"{request['max_sessions']} sessions are running, the policy's max_sessions"
            self._send({"event": "failed", "code": "too_many_sessions", "message": message})
            self._flush_blocking()
            return 0
        self._make_session_dir()
        try:
            self._start(fds)
        except OSError as exc:
            self._send({"event": "failed", "code": "spawn_failed", "message": _describe(exc)})
            self._flush_blocking()
            self._finish(self._state("failed", error=_describe(exc)))
            return 0
        self._send({"event": "started", "pid": self.pid, "started_at": self.started_at})
        self._flush()
        write_json_atomically(STATE_NAME, self._state("running"), durable=False)
        self._loop()
        self.finished = True
        final = self._state(self._final_state())
        self._send({"event": "exited", **final})
        self._finish(final)
        return 0

    def _take_slot(self) -> bool:
        """One of ``max_sessions`` slot files, locked for as long as this supervisor lives: the
        count of running sessions is exact across workers, and a supervisor that dies frees
        its slot with its descriptors."""
        slots = os.path.join(self.state_dir, SLOTS)
        os.makedirs(slots, mode=0o700, exist_ok=True)
        for number in range(self.spec["max_sessions"]):
            fd = os.open(
                os.path.join(slots, str(number)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot_fd = fd
            return True
        return False

    def _make_session_dir(self) -> None:
        """``sessions/<id>/``, which appears with its lock already held (it is made under a
        dot name and renamed): whoever sees the directory can tell from the lock whether a
        supervisor owns it. Its socket takes any worker's requests."""
        session_id = self.spec["session_id"]
        sessions = os.path.join(self.state_dir, SESSIONS)
        making = os.path.join(sessions, f".{session_id}")
        os.mkdir(making, 0o700)
        self.lock_fd = os.open(
            os.path.join(making, SESSION_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())  # who supervises: for operators
        self.session_dir = os.path.join(sessions, session_id)
        os.rename(making, self.session_dir)
        os.chdir(self.session_dir)  # the socket is bound by its short name (107-byte limit)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)
        try:
            listener.bind(SESSION_SOCKET)
        finally:
            os.umask(previous)
        listener.listen(1024)
        listener.setblocking(False)
        self.listener = listener

    def _read_request(self) -> tuple[dict[str, Any] | None, list[int]]:
        assert self.launcher is not None and self.launcher.sock is not None
        conn = self.launcher.sock
        if not _trusted_peer(conn):
            return None, []
        conn.settimeout(30.0)  # a worker sends its request at once; never wait forever
        data, fds, _, _ = socket.recv_fds(conn, READ_CHUNK, 8)
        buffer = bytearray(data)
        while b"\n" not in buffer and data and len(buffer) < MAX_REQUEST_BYTES:
            data = conn.recv(READ_CHUNK)
            buffer += data
        line, _, rest = bytes(buffer).partition(b"\n")
        self.launcher.inbox += rest
        try:
            request = json.loads(line)
        except ValueError:
            return None, fds
        if request.get("protocol") != PROTOCOL:
            return None, fds
        return request, fds

    def _start(self, fds: list[int]) -> None:
        spec = self.spec
        pty = spec["pty"]
        names = ("output",) if pty else ("stdout", "stderr")
        child_ends: dict[str, int] = {}
        initial = base64.b64decode(spec["stdin"]) if spec["stdin"] is not None else b""
        if pty:
            master, slave = os.openpty()
            winsize = struct.pack("HHHH", spec["rows"], spec["cols"], 0, 0)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
            child_ends = {"stdin": slave, "stdout": slave, "stderr": slave}
            readers = {"output": master}
            self.stdin_writer = os.dup(master)
        else:
            readers = {}
            for name in names:
                readers[name], child_ends[name] = os.pipe2(os.O_CLOEXEC)
            if spec["stdin"] is None and not spec["keep_stdin"]:
                child_ends["stdin"] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            else:
                child_ends["stdin"], self.stdin_writer = os.pipe2(os.O_CLOEXEC)
                self.close_stdin_when_written = not spec["keep_stdin"]
        for name in names:
            stream = Stream(
                os.path.join(self.session_dir, f"{name}.log"),
                spec["max_log_bytes"],
                spec["max_output_bytes"],
            )
            self.streams[readers[name]] = stream
            self.named[name] = stream
        error_read, error_write = os.pipe2(os.O_CLOEXEC)
        self.started_at = now_rfc3339()
        self.started = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:
            self._become_command(fds, child_ends, error_write, pty)
        os.close(error_write)
        for fd in {*child_ends.values(), *fds}:
            os.close(fd)
        failure = b""
        while chunk := os.read(error_read, 4096):  # empty: the exec succeeded (close-on-exec)
            failure += chunk
        os.close(error_read)
        if failure:
            os.waitpid(self.pid, 0)
            code, _, message = failure.decode(errors="replace").partition(":")
            raise OSError(int(code or 0), message)
        self.deadline = self.started + spec["timeout_s"]
        for fd in self.streams:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, "output")
        if self.stdin_writer is not None:
            os.set_blocking(self.stdin_writer, False)
            self._queue_input(initial)
            if not initial and self.close_stdin_when_written:
                self._close_stdin()
        self.wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the pipe
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, lambda *_: self._begin_kill(signal.SIGTERM, None))
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        assert self.launcher is not None and self.launcher.sock is not None
        self.launcher.sock.setblocking(False)
        self.selector.register(self.launcher.sock, selectors.EVENT_READ, "peer")
        assert self.listener is not None
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")

    def _become_command(
        self, fds: list[int], ends: dict[str, int], error_write: int, pty: bool
    ) -> None:
        """In the forked child: the command's session, limits and identity, then exec."""
        spec = self.spec
        report = error_write
        try:
            os.setsid()
            if pty:
                fcntl.ioctl(ends["stdin"], termios.TIOCSCTTY, 0)
            for number in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, *TERMINAL_SIGNALS):
                signal.signal(number, signal.SIG_DFL)
            if spec["sandbox"]:
                # bwrap stays outside the sandbox in the command's process group, so a C-c
                # would reach it, and its death takes the sandbox down with SIGKILL. It
                # ignores these; inside, ``env --default-signal`` restores them.
                for number in TERMINAL_SIGNALS:
                    signal.signal(number, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for name, value in spec["rlimits"].items():
                resource.setrlimit(getattr(resource, name), (value, value))
            exe, workspace, cwd = fds[0], fds[1], fds[2]
            os.fchdir(cwd)
            given = (ends["stdin"], ends["stdout"], ends["stderr"], exe, workspace, error_write)
            high = [os.dup(fd) for fd in given]  # none of them can be overwritten below
            for target, fd in enumerate(high):
                os.dup2(fd, target, inheritable=target < EXEC_ERROR_FD)
            report = EXEC_ERROR_FD
            os.closerange(EXEC_ERROR_FD + 1, os.sysconf("SC_OPEN_MAX"))
            # The workspace's descriptor never reaches the command: inside bwrap it would be
            # a directory of the host's file system, a way out through "..". bwrap binds the
            # executable from EXE_FD; without it, only a script's interpreter reads EXE_FD.
            os.set_inheritable(WORKSPACE_FD, False)
            if not spec["sandbox"]:
                os.set_inheritable(EXE_FD, spec["exe_inheritable"])
            if spec["uid"] is not None:
                os.setgroups([])
                os.setresgid(spec["gid"], spec["gid"], spec["gid"])
                os.setresuid(spec["uid"], spec["uid"], spec["uid"])
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
            if os.getppid() == 1:
                os._exit(1)  # the supervisor is already gone
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            target = spec["sandbox_path"] if spec["sandbox"] else EXE_FD
            os.execve(target, spec["argv"], spec["env"])
        except BaseException as exc:  # reported to the supervisor through the pipe
            code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
            os.write(report, f"{code}:{_describe(exc)}".encode())
        os._exit(127)

    # The loop.

    def _loop(self) -> None:
        while self.streams or self.status is None:
            now = time.monotonic()
            if self.status is None and not self.timed_out and now >= self.deadline:
                self.timed_out = True
                self._begin_kill(signal.SIGTERM, None)
            if self.status is not None and now > self.ended + self.spec["kill_grace_s"] + 1:
                self._close_streams()  # held open by something that is not ours to kill
            if self.kill_at is not None and now >= self.kill_at:
                self._signal_all(signal.SIGKILL)
                self.kill_at = now + 0.5  # again, for any that forked meanwhile
            timers = [
                self.deadline if self.status is None and not self.timed_out else None,
                self.kill_at,
                self.ended + self.spec["kill_grace_s"] + 1.01 if self.status is not None else None,
                *(waiter.deadline for waiter in self.waiters),
            ]
            upcoming = [t for t in timers if t is not None]
            wait = max(0.0, min(upcoming) - now) if upcoming else None
            for key, mask in self.selector.select(wait):
                getattr(self, f"_on_{key.data}")(key.fd, mask)
            self._reap()
            self._answer_waiters(time.monotonic())
            self._flush()

    def _on_output(self, fd: int, _: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # a PTY whose last slave closed reads EIO
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self.streams[fd].feed(data)
            if self.spec["pty"]:
                self._track_modes(data)
            return
        self.selector.unregister(fd)
        os.close(fd)
        del self.streams[fd]

    def _track_modes(self, data: bytes) -> None:
        """Follow DECCKM, so that cursor keys are sent as the program asked for them."""
        window = self.mode_carry + data
        if b"\x1b[?" in window:
            for parameters, action in MODE_SWITCH.findall(window):
                if CURSOR_KEY_MODE in parameters.split(b";"):
                    self.application_cursor = action == b"h"
        self.mode_carry = window[-16:]  # a switch split across two reads is still seen

    def _close_streams(self) -> None:
        for fd in list(self.streams):
            self.selector.unregister(fd)
            os.close(fd)
            del self.streams[fd]

    def _on_wake(self, fd: int, _: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)

    # Input: one queue, written in the order requests arrived.

    def _queue_input(self, data: bytes) -> None:
        if not data or self.stdin_writer is None:
            return
        if not self.input:
            self.selector.register(self.stdin_writer, selectors.EVENT_WRITE, "stdin")
        self.input += data
        self.input_queued += len(data)

    def _on_stdin(self, fd: int, _: int) -> None:
        try:
            written = os.write(fd, self.input[:READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin
            self._close_stdin()
            return
        del self.input[:written]
        self.input_written += written
        if not self.input:
            self.selector.unregister(fd)
            if self.close_stdin_when_written:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin_writer is None:
            return
        if self.input:
            self.selector.unregister(self.stdin_writer)
            self.input.clear()
        os.close(self.stdin_writer)
        self.stdin_writer = None

    # Requests from workers.

    def _on_accept(self, fd: int, _: int) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if not _trusted_peer(conn):
            conn.close()
            return
        conn.setblocking(False)
        self.peers[conn.fileno()] = Peer(conn)
        self.selector.register(conn, selectors.EVENT_READ, "peer")

    def _on_peer(self, fd: int, mask: int) -> None:
        peer = self.peers[fd]
        assert peer.sock is not None
        if mask & selectors.EVENT_WRITE:
            self._flush_peer(peer)
        if not mask & selectors.EVENT_READ or peer.sock is None:
            return
        try:
            data = peer.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        peer.inbox += data
        if len(peer.inbox) > MAX_REQUEST_BYTES:
            self._drop(peer)
            return
        for message in peer.messages():
            try:
                self._handle(peer, message)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                # A malformed request is answered, never fatal: the command depends on us.
                peer.send({"event": "error", "code": "bad_request", "message": _describe(exc)})

    def _handle(self, peer: Peer, message: dict[str, Any]) -> None:
        operation = message.get("op", "snapshot" if message.get("snapshot") else None)
        now = time.monotonic()
        deadline = message.get("deadline")
        if deadline is not None and now > _bounded_seconds(deadline, math.inf):
            peer.send({"event": "error", "code": "expired", "message": "read after its deadline"})
            return  # its worker has given up on it: acting now would act unrecorded
        if operation == "snapshot":  # the launching worker is about to answer "running"
            peer.send({"event": "snapshot", **self._state("running")})
            self._record_running()
        elif operation == "state":
            peer.send({"event": "state", **self._state("running", tails=False)})
        elif operation == "poll":
            offsets, limit = message["offsets"], message["limit"]
            if not (
                isinstance(offsets, dict)
                and all(_count(offset) for offset in offsets.values())
                and _count(limit)
                and 0 < limit <= MAX_POLL_BYTES
            ):
                raise ValueError("offsets are counts of bytes, and limit a positive count")
            wait_s = _bounded_seconds(message.get("wait_ms", 0), 30_000) / 1000
            self.waiters.append(Waiter(peer, message, now + wait_s))
        elif operation == "input":
            self._handle_input(peer, message, now)
        elif operation == "kill":
            number = signal.Signals[message["signal"]]
            grace = _bounded_seconds(message.get("grace_s", self.spec["kill_grace_s"]), 600)
            self._begin_kill(number, grace)
            self.waiters.append(Waiter(peer, message, now + grace + KILL_WAIT_S))
        elif operation == "remove":
            self.removing = True
            self._begin_kill(signal.SIGKILL, 0)
            self.waiters.append(Waiter(peer, message, now + 3600))  # answered in _finish
        else:
            peer.send({"event": "error", "code": "bad_request", "message": "unknown op"})

    def _handle_input(self, peer: Peer, message: dict[str, Any], now: float) -> None:
        if self.status is not None:
            peer.send({"event": "error", "code": "session_finished"})
            return
        if message.get("terminal") and not self.spec["pty"]:
            peer.send({"event": "error", "code": "not_a_pty"})
            return
        if self.stdin_writer is None:
            peer.send({"event": "error", "code": "stdin_closed"})
            return
        data = bytearray()
        for part in message["parts"]:
            if "cursor" in part:  # an unmodified cursor key: its bytes depend on DECCKM
                introducer = b"\x1bO" if self.application_cursor else b"\x1b["
                data += introducer + part["cursor"].encode()
            else:
                data += base64.b64decode(part["bytes"])
        start = self.input_queued
        self._queue_input(bytes(data))
        if message.get("eof"):
            if self.spec["pty"]:
                self._queue_input(b"\x04")  # the terminal's EOF character (VEOF)
            elif self.input:
                self.close_stdin_when_written = True
            else:
                self._close_stdin()
        request = {**message, "start": start, "end": self.input_queued}
        self.waiters.append(Waiter(peer, request, now + INPUT_WAIT_S))

    def _answer_waiters(self, now: float) -> None:
        waiting = []
        for waiter in self.waiters:
            try:
                answer = self._answer(waiter, now)
            except (KeyError, ValueError, TypeError, OSError) as exc:  # never fatal (_handle)
                answer = {"event": "error", "code": "bad_request", "message": _describe(exc)}
            if answer is None:
                waiting.append(waiter)
            else:
                waiter.peer.send(answer)
        self.waiters = waiting

    def _answer(self, waiter: Waiter, now: float) -> dict[str, Any] | None:
        """The answer to a waiting request, or None while it must wait longer."""
        request, due = waiter.request, now >= waiter.deadline
        operation = request["op"]
        if operation == "poll":
            offsets = request["offsets"]
            fresh = any(
                name in self.named and self.named[name].total > offset
                for name, offset in offsets.items()
            )
            if not (fresh or self.finished or due):
                return None
            return self._poll_answer(offsets, int(request["limit"]))
        if operation == "input":
            landed = min(self.input_written, request["end"]) - request["start"]
            wanted = request["end"] - request["start"]
            if self.stdin_writer is None and landed < wanted:
                return {"event": "error", "code": "stdin_closed", "bytes": max(landed, 0)}
            if landed < wanted and not due:
                return None
            return {"event": "input", "bytes": landed, "queued": wanted - landed}
        if operation == "kill":
            if not (self.finished or due):
                return None
            return {"event": "kill", **self._state(self._current_state(), tails=False)}
        return None  # remove: answered once the directory is gone (_finish)

    def _poll_answer(self, offsets: dict[str, int], limit: int) -> dict[str, Any]:
        answer = {"event": "poll", **self._state(self._current_state(), tails=False)}
        chunks = {}
        for name, offset in offsets.items():
            if name in self.named:
                start, data = self.named[name].read(offset, limit)
                chunks[name] = {"start": start, "data": base64.b64encode(data).decode()}
        answer["chunks"] = chunks
        return answer

    def _current_state(self) -> str:
        return self._final_state() if self.finished else "running"

    def _record_running(self) -> None:
        """``state.json`` is made durable while the command runs once the worker may no
        longer be waiting: when it asks for a snapshot (it is about to answer ``running``) or
        goes away. A command that ends while its worker waits needs no fsync at all."""
        if self.status is None and not self.recorded_running:
            write_json_atomically(STATE_NAME, self._state("running"), durable=True)
            self.recorded_running = True

    def _drop(self, peer: Peer) -> None:
        if peer.sock is None:
            return
        if peer is self.launcher:
            if hasattr(self, "started"):
                self._record_running()
            self.launcher = None
        self.waiters = [waiter for waiter in self.waiters if waiter.peer is not peer]
        del self.peers[peer.sock.fileno()]
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.sock)
        peer.sock.close()
        peer.sock = None

    # Signals and reaping.

    def _begin_kill(self, number: int, grace_s: float | None) -> None:
        """``number`` to the command's group and every descendant; SIGKILL after the grace
        (the policy's ``kill_grace_s`` unless a kill request gave its own)."""
        if self.status is not None or not self.pid:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, number)
        self._signal_all(number)
        grace = self.spec["kill_grace_s"] if grace_s is None else grace_s
        kill_at = time.monotonic() + grace
        if self.kill_at is None or kill_at < self.kill_at:
            self.kill_at = kill_at

    def _signal_all(self, number: int) -> None:
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, number)

    def _reap(self) -> None:
        for pid, status in reaped():
            if pid == self.pid:
                self.status = status
                self.ended = time.monotonic()
                self.ended_at = now_rfc3339()
                self._kill_leftovers()
                self.kill_at = None

    def _kill_leftovers(self) -> None:
        """The command is over: what it left behind (in its group, or in a session of its
        own, handed back to us as their subreaper) goes with it. Killed until we have no
        child left at all, so one forked while we looked is killed on the next pass."""
        deadline = time.monotonic() + LEFTOVER_KILL_S
        while time.monotonic() < deadline:
            for _ in reaped():
                pass
            try:  # WNOWAIT: only whether any child is left, none is reaped here
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            for pid in descendants(os.getpid()) or children_by_scan(os.getpid()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.001)

    def _final_state(self) -> str:
        assert self.status is not None
        if self.timed_out:
            return "timed_out"
        return "signalled" if os.WIFSIGNALED(self.status) else "exited"

    def _state(self, state: str, error: str | None = None, tails: bool = True) -> dict[str, Any]:
        ended = self.status is not None
        record: dict[str, Any] = {
            "session_id": self.spec["session_id"],
            "state": state,
            "pid": self.pid or None,
            "argv": self.spec["shown_argv"],
            "cwd": self.spec["cwd"],
            "pty": self.spec["pty"],
            "started_at": getattr(self, "started_at", None),
            "ended_at": self.ended_at if ended else None,
            "duration_ms": int(((self.ended if ended else time.monotonic()) - self.started) * 1000)
            if hasattr(self, "started")
            else 0,
            "exit_code": None,
            "signal": None,
            "stdin_open": self.stdin_writer is not None and not ended,
            "ttl_s": self.spec["session_ttl_s"],
            "streams": {name: stream.state(tails) for name, stream in self.named.items()},
        }
        if ended:
            assert self.status is not None
            if os.WIFSIGNALED(self.status):
                record["signal"] = signal_name(os.WTERMSIG(self.status))
            else:
                record["exit_code"] = os.WEXITSTATUS(self.status)
        if error is not None:
            record["error"] = error
        return record

    def _finish(self, final: dict[str, Any]) -> None:
        """Record the final state, answer everyone, and leave: the socket goes first, so a
        worker that cannot connect any more finds the final state on disk."""
        if not self.removing:
            # A worker that got the final state records it in the database; one that is gone
            # leaves this file as the only record, so then it is made durable.
            write_json_atomically(STATE_NAME, final, durable=self.launcher is None)
            mark_expiry(EXPIRES_NAME, time.time() + self.spec["session_ttl_s"])
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SESSION_SOCKET)
        now = time.monotonic()
        for waiter in self.waiters:
            if waiter.request["op"] != "remove":
                answer = self._answer(waiter, now)
                if answer is None:  # input that cannot land any more
                    answer = {"event": "error", "code": "session_finished"}
                waiter.peer.send(answer)
        if self.removing:
            os.chdir(self.state_dir)
            shutil.rmtree(self.session_dir, ignore_errors=True)
            for waiter in self.waiters:
                if waiter.request["op"] == "remove":
                    waiter.peer.send({"event": "removed", **final})
        self._flush_blocking()

    # Talking to workers.

    def _send(self, message: dict[str, Any]) -> None:
        if self.launcher is not None:
            self.launcher.send(message)

    def _flush(self) -> None:
        for peer in list(self.peers.values()):
            self._flush_peer(peer)

    def _flush_peer(self, peer: Peer) -> None:
        """Send what the socket takes now; the rest is sent when it becomes writable, so a
        slow worker never stalls us. One that lets its answers pile up is dropped."""
        while peer.sock is not None and peer.outbox:
            try:
                sent = peer.sock.send(peer.outbox)
            except BlockingIOError:
                break
            except OSError:
                self._drop(peer)
                return
            del peer.outbox[:sent]
        if peer.sock is None:
            return
        if len(peer.outbox) > MAX_OUTBOX_BYTES:
            self._drop(peer)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outbox else 0)
        if self.selector.get_key(peer.sock).events != events:
            self.selector.modify(peer.sock, events, "peer")

    def _flush_blocking(self) -> None:
        deadline = time.monotonic() + FLUSH_WAIT_S  # for every peer together
        for peer in list(self.peers.values()):
            if peer.sock is None or not peer.outbox:
                continue
            peer.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                peer.sock.sendall(peer.outbox)
            except OSError:
                self._drop(peer)
                continue
            peer.outbox.clear()
            peer.sock.setblocking(False)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bounded_seconds(value: Any, most: float) -> float:
    """A number of seconds (or milliseconds) from a request: finite, 0 to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return min(max(float(value), 0.0), most)


def _trusted_peer(conn: socket.socket) -> bool:
    """Only root or the service's own user may talk to a supervisor."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, peer_uid, _ = struct.unpack("3i", creds)
    return peer_uid in (0, os.getuid())


def reaped() -> Iterator[tuple[int, int]]:
    """Each child that has ended, with its wait status, until none is left to reap."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def descendants(root: int) -> list[int]:
    """Every process below ``root``, read from ``/proc/<pid>/task/<tid>/children``."""
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                continue
            found.extend(children)
            pending.extend(children)
    return found


def children_by_scan(parent: int) -> list[int]:
    """The processes whose parent is ``parent``, from every ``/proc/<pid>/stat``: slower than
    the ``children`` files, which may miss a process while it is being reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def signal_name(number: int) -> str:
    """``SIGKILL``, or ``SIGRTMIN+6`` for a real-time signal, which has no name of its own."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"SIG{number}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "serve":
        return serve(argv[2], int(argv[3]))
    print("usage: supervisor.py serve STATE_DIR READY_FD", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

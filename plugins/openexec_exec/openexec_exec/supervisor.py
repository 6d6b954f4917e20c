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
worker: ``accepted``, then ``started`` (or ``failed``), ``snapshot`` answers, and ``exited``
with the final state. The worker may go away at any time: the supervisor carries on alone.
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
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import traceback
from collections.abc import Iterator
from typing import Any

PROTOCOL = 1
SOCKET_NAME = f"supervisor-v{PROTOCOL}.sock"
LOCK_NAME = "supervisor.lock"
SESSIONS = "sessions"
IDLE_EXIT_S = 60.0
LEFTOVER_KILL_S = 5.0  # a process stuck in the kernel (D state) cannot be waited for forever
MAX_REQUEST_BYTES = 8 << 20
READ_CHUNK = 65536
EXE_FD, WORKSPACE_FD, EXEC_ERROR_FD = 3, 4, 5  # where the command finds what it was given

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
        idle_since = time.monotonic()
        while True:
            self._reap()
            while len(self.waiting) < self.POOL:
                self.waiting.add(self._fork_waiting())
            if self.busy:
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


def _redirect_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)


# One supervisor per command.


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
            if self.log < 0:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                self.log = os.open(self.path, flags, 0o600)
            os.write(self.log, chunk)
            self.logged += len(chunk)
        self.tail += data
        if len(self.tail) > self.max_tail:
            del self.tail[: len(self.tail) - self.max_tail]

    def state(self) -> dict[str, Any]:
        return {
            "bytes": self.total,
            "logged": self.logged,
            "sha256": self.digest.hexdigest(),
            "tail": base64.b64encode(bytes(self.tail)).decode(),
        }


class Supervisor:
    """Runs one command from launch request to final state (see the module docstring)."""

    def __init__(self, conn: socket.socket, state_dir: str) -> None:
        self.conn: socket.socket | None = conn
        self.state_dir = state_dir
        self.selector = selectors.DefaultSelector()
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.streams: dict[int, Stream] = {}  # readable descriptor -> its stream
        self.named: dict[str, Stream] = {}
        self.pid = 0
        self.status: int | None = None
        self.timed_out = False
        self.kill_at: float | None = None
        self.recorded_running = False

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
        self.session_dir = os.path.join(self.state_dir, SESSIONS, request["session_id"])
        os.makedirs(self.session_dir, mode=0o700, exist_ok=False)
        self.state_path = os.path.join(self.session_dir, "state.json")
        try:
            self._start(fds)
        except OSError as exc:
            self._send({"event": "failed", "code": "spawn_failed", "message": _describe(exc)})
            self._flush_blocking()
            failed = self._state("failed", error=_describe(exc))
            write_json_atomically(self.state_path, failed, durable=False)
            return 0
        self._send({"event": "started", "pid": self.pid, "started_at": self.started_at})
        self._flush()
        self._loop()
        final = self._state(self._final_state())
        self._send({"event": "exited", **final})
        self._flush_blocking()
        # A worker that got the final state records it in the database; one that is gone
        # leaves this file as the only record, so then it is made durable.
        write_json_atomically(self.state_path, final, durable=self.conn is None)
        return 0

    def _read_request(self) -> tuple[dict[str, Any] | None, list[int]]:
        assert self.conn is not None
        creds = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer_uid, _ = struct.unpack("3i", creds)
        if peer_uid not in (0, os.getuid()):
            return None, []
        self.conn.settimeout(30.0)  # a worker sends its request at once; never wait forever
        data, fds, _, _ = socket.recv_fds(self.conn, READ_CHUNK, 8)
        buffer = bytearray(data)
        while b"\n" not in buffer and data and len(buffer) < MAX_REQUEST_BYTES:
            data = self.conn.recv(READ_CHUNK)
            buffer += data
        line, _, rest = bytes(buffer).partition(b"\n")
        self.inbox += rest
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
        if pty:
            master, slave = os.openpty()
            winsize = struct.pack("HHHH", spec["rows"], spec["cols"], 0, 0)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
            child_ends = {"stdin": slave, "stdout": slave, "stderr": slave}
            readers = {"output": master}
            self.stdin_writer: int | None = os.dup(master)
        else:
            readers = {}
            for name in names:
                readers[name], child_ends[name] = os.pipe2(os.O_CLOEXEC)
            if spec["stdin"] is None:
                child_ends["stdin"] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                self.stdin_writer = None
            else:
                child_ends["stdin"], self.stdin_writer = os.pipe2(os.O_CLOEXEC)
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
        self.stdin_data = base64.b64decode(spec["stdin"]) if spec["stdin"] is not None else b""
        if self.stdin_writer is not None:
            os.set_blocking(self.stdin_writer, False)
            if self.stdin_data or not pty:
                self.selector.register(self.stdin_writer, selectors.EVENT_WRITE, "stdin")
        self.wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the pipe
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, lambda *_: self._begin_kill())
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        if self.conn is not None:
            self.conn.setblocking(False)
            self.selector.register(self.conn, selectors.EVENT_READ, "conn")

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
            for number in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(number, signal.SIG_DFL)
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
                self._begin_kill()
            if self.status is not None and now > self.ended + self.spec["kill_grace_s"] + 1:
                self._close_streams()  # held open by something that is not ours to kill
            if self.kill_at is not None and now >= self.kill_at:
                self._signal_all(signal.SIGKILL)
                self.kill_at = now + 0.5  # again, for any that forked meanwhile
            timers = [
                self.deadline if self.status is None and not self.timed_out else None,
                self.kill_at,
                self.ended + self.spec["kill_grace_s"] + 1.01 if self.status is not None else None,
            ]
            upcoming = [t for t in timers if t is not None]
            wait = max(0.0, min(upcoming) - now) if upcoming else None
            for key, mask in self.selector.select(wait):
                getattr(self, f"_on_{key.data}")(key.fd, mask)
            self._reap()
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
            return
        self.selector.unregister(fd)
        os.close(fd)
        del self.streams[fd]

    def _close_streams(self) -> None:
        for fd in list(self.streams):
            self.selector.unregister(fd)
            os.close(fd)
            del self.streams[fd]

    def _on_stdin(self, fd: int, _: int) -> None:
        try:
            written = os.write(fd, self.stdin_data[:READ_CHUNK]) if self.stdin_data else 0
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin
            self.stdin_data = b""
            written = 0
        self.stdin_data = self.stdin_data[written:]
        if not self.stdin_data:
            self.selector.unregister(fd)
            if not self.spec["pty"]:
                os.close(fd)
                self.stdin_writer = None

    def _on_wake(self, fd: int, _: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)

    def _on_conn(self, fd: int, _: int) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn()
            return
        self.inbox += data
        while b"\n" in self.inbox:
            line, _, rest = bytes(self.inbox).partition(b"\n")
            self.inbox = bytearray(rest)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("snapshot"):
                running = self._state("running")
                self._send({"event": "snapshot", **running})
                self._record_running()
        self._flush()

    def _record_running(self) -> None:
        """``state.json`` says ``running`` once the worker may no longer be waiting: when it
        asks for a snapshot (it is about to answer ``running``) or goes away. A command that
        ends while its worker waits gets only its final state, one file write less."""
        if self.status is None and not self.recorded_running:
            write_json_atomically(self.state_path, self._state("running"), durable=True)
            self.recorded_running = True

    def _drop_conn(self) -> None:
        if self.conn is not None and self.status is None and hasattr(self, "state_path"):
            self._record_running()
        if self.conn is not None:
            self.selector.unregister(self.conn)
            self.conn.close()
            self.conn = None

    # Signals and reaping.

    def _begin_kill(self) -> None:
        """SIGTERM to the command's group and every descendant; SIGKILL after the grace."""
        if self.kill_at is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGTERM)
        self._signal_all(signal.SIGTERM)
        self.kill_at = time.monotonic() + self.spec["kill_grace_s"]

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

    def _state(self, state: str, error: str | None = None) -> dict[str, Any]:
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
            "streams": {name: stream.state() for name, stream in self.named.items()},
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

    # Talking to the worker.

    def _send(self, message: dict[str, Any]) -> None:
        if self.conn is not None:
            self.outbox += json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def _flush(self) -> None:
        while self.conn is not None and self.outbox:
            try:
                sent = self.conn.send(self.outbox)
            except BlockingIOError:
                return  # the rest goes with the next message; a slow worker never stalls us
            except OSError:
                self._drop_conn()
                return
            del self.outbox[:sent]

    def _flush_blocking(self) -> None:
        if self.conn is None:
            return
        self.conn.settimeout(5.0)
        try:
            self.conn.sendall(self.outbox)
        except OSError:
            self._drop_conn()
        self.outbox.clear()
        if self.conn is not None:
            self.conn.setblocking(False)


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

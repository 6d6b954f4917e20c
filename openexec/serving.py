"""A fix for how ``uvicorn --workers N`` serves: TCP_NODELAY on the sockets workers inherit."""

from __future__ import annotations

import contextlib
import os
import socket
import stat


def nodelay_on_inherited_listeners() -> int:
    """Set TCP_NODELAY on every server TCP socket this process holds; return how many.

    ``uvicorn --workers N`` hands each worker a bound socket made without a protocol number,
    and asyncio sets TCP_NODELAY only on sockets that name TCP (upstream issue
    Kludex/uvicorn#3149). Each keep-alive response then waits for the client's delayed ACK,
    about 40 ms. Sockets accepted from a listener inherit the option (Linux), so setting it
    on the bound socket when the worker imports the app, before it listens, fixes every
    connection. A server socket is a bound TCP socket with no peer.
    """
    fixed = 0
    with contextlib.suppress(FileNotFoundError):  # no /proc: not Linux, nothing to do
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                    fixed += _nodelay_if_server_socket(int(name))
    return fixed


def _nodelay_if_server_socket(descriptor: int) -> int:
    candidate = socket.socket(fileno=descriptor)
    try:
        if candidate.family not in (socket.AF_INET, socket.AF_INET6):
            return 0
        if candidate.type != socket.SOCK_STREAM or candidate.getsockname()[1] == 0:
            return 0
        try:
            candidate.getpeername()
            return 0  # connected: a client's socket, not ours to change
        except OSError:
            pass
        candidate.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return 1
    finally:
        candidate.detach()  # the descriptor stays the server's

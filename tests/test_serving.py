"""TCP_NODELAY on the server sockets ``uvicorn --workers N`` hands its workers."""

from __future__ import annotations

import socket

from openexec.serving import nodelay_on_inherited_listeners


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_bound_server_socket_gets_nodelay_and_its_connections_inherit_it():
    # What uvicorn's supervisor makes: no protocol number, bound, not yet listening.
    server = socket.socket(family=socket.AF_INET)
    server.bind(("127.0.0.1", 0))
    client = accepted = None
    try:
        assert nodelay(server) == 0
        assert nodelay_on_inherited_listeners() >= 1
        assert nodelay(server) == 1
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        assert nodelay(accepted) == 1
        nodelay_on_inherited_listeners()
        assert nodelay(client) == 0  # a connected socket is not the server's to change
    finally:
        for sock in (client, accepted, server):
            if sock is not None:
                sock.close()

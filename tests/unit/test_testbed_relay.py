"""The NAT testbed's TCP relay (`edgeagent.testbed.nat.Relay`), on loopback (no namespaces, no root).

`stop` must free its address at once: a test module makes one relay per service port for every device, so
the next device's relays bind the very same ports. The second push test behind NAT in one module failed
with EADDRINUSE: stopping closed only the listening socket, and a relayed connection still open (its far
end had not closed) kept the address in use.
"""

from __future__ import annotations

import socket
import threading

from edgeagent.testbed.nat import Relay
from tests.fixtures import procs


def _server_that_never_closes() -> tuple[socket.socket, list[socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(b"hello")

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


def test_stop_frees_the_address_while_a_relayed_connection_is_open() -> None:
    target, accepted = _server_that_never_closes()
    port = procs.free_port()
    relay = Relay(("127.0.0.1", port), target.getsockname()).start()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert client.recv(16) == b"hello"  # relayed, and the connection stays open
        assert relay.peers == ["127.0.0.1"]
        relay.stop()
        again = Relay(("127.0.0.1", port), target.getsockname())  # the next device's relay, at once
        again.stop()
        assert client.recv(16) == b""  # the relayed connection was closed with the relay
    finally:
        client.close()
        for conn in accepted:
            conn.close()
        target.close()

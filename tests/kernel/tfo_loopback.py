"""Fast Open exchanges over a namespace's loopback, run inside the namespace by the tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from dnstfo.kernel import tcp_metrics
from dnstfo.kernel.sockets import TfoKey, client_socket, send_in_syn, tfo_listener
from dnstfo.kernel.tcpinfo import FastOpenClientFail, tcp_info

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Exchange:
    client_syn_data: bool
    server_syn_data: bool
    server_tfo_child: bool
    client_fail: FastOpenClientFail
    payload: bytes
    cookie_after: bytes | None


def exchange(listener: socket.socket, data: bytes = b"ping") -> Exchange:
    """One connection: ``data`` sent with MSG_FASTOPEN, read by the server, both TCP_INFOs."""
    with client_socket(socket.AF_INET) as client:
        send_in_syn(client, data, listener.getsockname())
        peer, _ = listener.accept()
        with peer:
            got = peer.recv(100)
            server = tcp_info(peer)
            peer.sendall(b"pong")
            client.recv(4)
            info = tcp_info(client)
    return Exchange(
        client_syn_data=info.syn_data,
        server_syn_data=server.syn_data,
        server_tfo_child=server.tfo_child,
        client_fail=info.fastopen_client_fail,
        payload=got,
        cookie_after=tcp_metrics.cookie_for(HOST),
    )


def with_keys(keys: list[str | None]) -> list[Exchange]:
    """One exchange per listener, each listener made anew with the given key (a restart)."""
    out = []
    for text in keys:
        key = TfoKey.parse(text) if text else None
        with tfo_listener((HOST, 0), key=key) as listener:
            out.append(exchange(listener))
    return out

"""The multiplexed driver with the query in the SYN: it waits for the answer without spinning."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.message import build_query
from dnstfo.client.multiplex import Multiplexer, Outcome
from dnstfo.kernel.sockets import tfo_listener
from dnstfo.lab.netns import Namespace
from dnstfo.wire.framing import FrameDecoder, frame
from tests.client.tinyserver import answer

pytestmark = pytest.mark.netadmin

DELAY_S = 0.3


def slow_server(listener: socket.socket, stop: threading.Event) -> None:
    """Answers each connection's query DELAY_S after it arrives (a slow server)."""
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            (query,) = FrameDecoder().feed(conn.recv(4096))
            stop.wait(DELAY_S)  # the server's own slowness, not a synchronisation
            conn.sendall(frame(answer(query)))


def in_syn_without_spinning() -> dict[str, Any]:
    listener = tfo_listener(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=slow_server, args=(listener, stop), daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        cfg = QueryConfig(qname="a.example.", server="127.0.0.1", port=port, tfo=TfoMethod.SENDTO)
        results: list[dict[str, Any]] = []
        for _ in range(2):  # the first fetches the cookie, the second sends in the SYN
            mux = Multiplexer()
            wakeups = 0
            select = mux._sel.select

            def counted(timeout: float | None = None, _select: Callable[..., Any] = select) -> Any:
                nonlocal wakeups
                wakeups += 1
                return _select(timeout)

            mux._sel.select = counted  # type: ignore[method-assign]
            out: list[Outcome] = []
            mux.start(cfg, build_query(cfg), out.append)
            while len(mux):
                mux.poll(5.0)
            mux.close()
            results.append({"in_syn": out[0].in_syn, "wakeups": wakeups, "rcode": out[0].rcode})
        return {"results": results}
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_query_in_the_syn_waits_for_the_answer_without_spinning(
    make_ns: Callable[[str], Namespace],
) -> None:
    ns = make_ns("3")
    first, second = ns.run(in_syn_without_spinning, timeout=60)["results"]
    assert first["in_syn"] == 0
    assert second["in_syn"] > 0, "the second query rode in the SYN"
    assert second["rcode"] == 0
    # Connected, then the answer: a few wake-ups, not one per pass of a writable socket.
    assert second["wakeups"] < 10, second

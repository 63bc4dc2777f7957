"""The lab demo: the same exchange three times over one lab, to show 2 round trips become 1.

The first exchange has no cookie: the SYN asks for one and the request follows the handshake
(2 RTT). The next ones carry the request in the SYN and get the answer after 1 RTT.
:func:`demo_exchange` is the one place that decides what "an exchange" is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dnstfo.lab.ping import PingExchange, ping_exchange, ping_server
from dnstfo.lab.topology import Lab, LabSpec, start_lab


@dataclass(frozen=True, slots=True)
class DemoStep:
    """One exchange of the demo."""

    number: int
    """1 for the first exchange."""
    exchange: PingExchange
    """What it took and what the kernel did."""
    rtt_ms: float
    """The lab's round-trip time, for :attr:`rounds`."""

    @property
    def rounds(self) -> float:
        """The exchange's duration in round trips."""
        return self.exchange.rounds(self.rtt_ms)


@contextlib.contextmanager
def demo_target(lab: Lab) -> Iterator[tuple[str, int]]:
    """Runs the demo's server in the lab's server namespace; yields its address."""
    with ping_server(lab.server, lab.server_v4) as address:
        yield address


def demo_exchange(lab: Lab, address: tuple[str, int]) -> PingExchange:
    """One exchange from the client namespace to the demo server."""
    return lab.client.run(ping_exchange, address, realtime=True)


def run_demo(
    spec: LabSpec,
    *,
    exchanges: int = 3,
    on_lab: Callable[[Lab], None] | None = None,
    on_step: Callable[[DemoStep], None] | None = None,
) -> list[DemoStep]:
    """Builds a lab, runs the exchanges, tears the lab down.

    Args:
        spec: the lab to build.
        exchanges: how many exchanges to make.
        on_lab: called once the lab is up (to show its addresses).
        on_step: called after each exchange (to show it at once).

    Returns:
        The steps, in order.

    Raises:
        PermissionNeeded: not root or no /dev/net/tun.
        LabError: the lab failed.
    """
    steps: list[DemoStep] = []
    with start_lab(spec) as lab, demo_target(lab) as address:
        if on_lab is not None:
            on_lab(lab)
        for number in range(1, exchanges + 1):
            step = DemoStep(number, demo_exchange(lab, address), spec.rtt_ms)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    return steps

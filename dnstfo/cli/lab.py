"""``dnstfo lab``: bring up the network lab, or run the round-trip demo in it."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from dnstfo.errors import DnstfoError, PermissionNeeded
from dnstfo.lab.delay import Fault

EXIT_LAB_ERROR = 1
EXIT_NO_PRIVILEGE = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_ms(_ctx: click.Context | None, _param: click.Parameter | None, value: str) -> float:
    """Parses ``100ms``, ``0.1s`` or ``100`` (milliseconds) into milliseconds."""
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 100ms or 0.1s")
    number, unit = float(match.group(1)), match.group(2) or "ms"
    return number * 1000 if unit == "s" else number


def _rtt_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--rtt",
        default="100ms",
        show_default=True,
        callback=parse_ms,
        help="Round-trip time between client and server (100ms, 0.1s).",
    )(fn)


@contextmanager
def _lab_errors() -> Iterator[None]:
    """Turns library errors into one line and an exit code; Ctrl-C into a quiet exit."""
    try:
        yield
    except PermissionNeeded as exc:
        _fail(f"{exc}", EXIT_NO_PRIVILEGE)
    except DnstfoError as exc:
        _fail(f"{exc}", EXIT_LAB_ERROR)
    except KeyboardInterrupt:
        click.echo("lab down", err=True)
        sys.exit(130)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"dnstfo lab: {message}", err=True)
    sys.exit(code)


@click.group()
def lab() -> None:
    """The network lab: two namespaces joined by a delay line with middlebox faults."""


@lab.command()
@_rtt_option
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice([f.value for f in Fault]),
    help="A middlebox fault to play (repeatable).",
)
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0, help="Packet loss in %.")
@click.option("--jitter", default="0ms", callback=parse_ms, help="Delay variation (e.g. 5ms).")
@click.option("--client-tfo", type=int, default=3, show_default=True,
              help="net.ipv4.tcp_fastopen in the client namespace.")  # fmt: skip
@click.option("--server-tfo", type=int, default=3, show_default=True,
              help="net.ipv4.tcp_fastopen in the server namespace.")  # fmt: skip
def up(
    rtt: float,
    faults: tuple[str, ...],
    loss: float,
    jitter: float,
    client_tfo: int,
    server_tfo: int,
) -> None:
    """Start a lab and keep it up until Ctrl-C."""
    from dnstfo.lab.topology import LabSpec, start_lab

    with _lab_errors():
        spec = LabSpec(
            rtt_ms=rtt,
            jitter_ms=jitter,
            loss=loss / 100,
            faults=frozenset(Fault(f) for f in faults),
            client_tcp_fastopen=client_tfo,
            server_tcp_fastopen=server_tfo,
        )
        with start_lab(spec) as running:
            _render_lab(running, hints=True)
            click.echo("up; press Ctrl-C to tear it down")
            sys.stdout.flush()
            while True:
                signal.pause()


@lab.command()
@_rtt_option
@click.option("--count", default=3, show_default=True, help="How many exchanges.")
def demo(rtt: float, count: int) -> None:
    """Show TFO turn 2 round trips into 1, on a lab with the given RTT."""
    from dnstfo.lab.demo import run_demo
    from dnstfo.lab.topology import LabSpec

    with _lab_errors():
        click.echo(f"building a lab with {rtt:g} ms RTT ...")
        steps = run_demo(
            LabSpec(rtt_ms=rtt), exchanges=count, on_lab=_render_lab, on_step=_render_step
        )
    if len(steps) > 1:
        later = sum(s.rounds for s in steps[1:]) / (len(steps) - 1)
        click.echo(
            f"first contact took {steps[0].rounds:.2f} RTT (handshake, then request); "
            f"with the cookie, {later:.2f} RTT (request in the SYN)"
        )


def _render_lab(running: Any, hints: bool = False) -> None:
    spec = running.spec
    faults = ", ".join(sorted(f.value for f in spec.faults)) or "none"
    click.echo(f"client  {running.client.name}  {running.device} {running.client_v4}"
               + (f" {running.client_v6}" if running.client_v6 else ""))  # fmt: skip
    click.echo(f"server  {running.server.name}  {running.device} {running.server_v4}"
               + (f" {running.server_v6}" if running.server_v6 else ""))  # fmt: skip
    click.echo(
        f"delay   rtt {spec.rtt_ms:g} ms, jitter {spec.jitter_ms:g} ms, "
        f"loss {spec.loss * 100:g} %, faults: {faults} (relay pid {running.delay.pid})"
    )
    if not hints:
        return
    click.echo(f"try     ip netns exec {running.server.name} <server listening on "
               f"{running.server_v4}>")  # fmt: skip
    click.echo(f"        ip netns exec {running.client.name} <client to {running.server_v4}>")


def _render_step(step: Any) -> None:
    x = step.exchange
    cookie = f"yes ({len(x.cookie_after)} bytes)" if x.cookie_after else "no"
    click.echo(
        f"exchange {step.number}: {x.ms:7.1f} ms = {step.rounds:4.2f} RTT   "
        f"SYN data acked: {'yes' if x.syn_data_acked else 'no ':3}   cookie cached: {cookie}"
    )

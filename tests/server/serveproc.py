"""A ``dnstfo serve`` process for tests: started, its log read in a thread, stopped.

Tests wait for log lines and answers with bounded deadlines, never for fixed times.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import dns.message
import dns.query

DNSTFO = str(Path(sys.executable).parent / "dnstfo")
ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\nw A {address}\n"
"""A tiny zone; ``w`` holds the address the tests change to see a reload."""


def write_zone(directory: Path, address: str = "192.0.2.7", serial: int = 1) -> Path:
    """Writes ``t.example.zone`` into ``directory`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "t.example.zone"
    path.write_text(ZONE.format(address=address).replace(" 1 2 3 4 5", f" {serial} 2 3 4 5"))
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (also checked free for UDP)."""
    while True:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def ask(port: int, name: str = "w.t.example.", *, timeout: float = 2.0) -> dns.message.Message:
    """One query over TCP to 127.0.0.1:port."""
    return dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout)


def address_of(response: dns.message.Message) -> str:
    """The address in the first A record of the answer."""
    return str(response.answer[0][0].address)


class ServeProcess:
    """``dnstfo serve ARGS`` in its own session; stderr collected line by line.

    Args:
        args: the arguments after ``dnstfo serve``.
        prefix: a command that runs ``dnstfo`` (e.g. setpriv to drop privileges).
        popen: more arguments for ``subprocess.Popen``.
    """

    def __init__(self, args: Sequence[str], prefix: Sequence[str] = (), **popen: object) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [*prefix, DNSTFO, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **popen,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        self.proc.stderr.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def text(self) -> str:
        """Everything logged so far."""
        with self._cond:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        """Lines logged so far that match the regular expression."""
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def wait_for(self, pattern: str, count: int = 1, within: float = 15.0) -> None:
        """Waits until ``count`` lines match ``pattern``; fails on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        with self._cond:
            while sum(1 for line in self.lines if regex.search(line)) < count:
                left = deadline - time.monotonic()
                finished = not self._reader.is_alive()
                if left <= 0 or finished:
                    state = f"exited {self.proc.poll()}" if finished else "still running"
                    raise AssertionError(
                        f"{count} lines matching {pattern!r} not logged ({state}):\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.5))

    def first_answer(self, port: int, within: float = 15.0) -> dns.message.Message:
        """The first answer of the starting server (polls connect, bounded); fails with
        the log if the server exits first."""
        deadline = time.monotonic() + within
        while True:
            try:
                return ask(port, timeout=1.0)
            except OSError:
                status = self.proc.poll()
                if status is not None or time.monotonic() > deadline:
                    self._reader.join(5)
                    raise AssertionError(f"no answer (exit {status}):\n{self.text}") from None
                time.sleep(0.02)

    def signal(self, signum: int) -> None:
        """Sends ``signum`` to the server process (not its workers)."""
        self.proc.send_signal(signum)

    def wait(self, within: float = 20.0) -> int:
        """Waits for the exit and the end of its log; returns the exit status."""
        status = self.proc.wait(within)
        self._reader.join(within)
        return status

    def stop(self, within: float = 20.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(within)

    def kill(self) -> None:
        """Kills the whole session (the server and its workers, started here)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def run_serve(args: Sequence[str], within: float = 30.0, **popen: object) -> tuple[int, str]:
    """Runs ``dnstfo serve ARGS`` expected to exit by itself; returns (status, stderr)."""
    with ServeProcess(args, **popen) as proc:
        status = proc.wait(within)
        return status, proc.text

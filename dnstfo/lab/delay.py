"""The delay line: a relay process between two TUN devices that delays, loses and edits packets.

Theory of operation
-------------------
``tc netem`` is not available everywhere (not on the machine this was built on), so delay is
made in user space. The relay is its own process (``python -m dnstfo.lab.delay``), so the
caller's GIL, garbage collector and test code never stall a packet.

1. Start-up. The relay enters the client namespace (``setns``) and opens ``/dev/net/tun``
   there, then does the same in each server namespace. A TUN device lives in the namespace
   where it was created, and the file descriptor keeps working after the process moves on,
   so the devices exist only inside the lab and vanish when the relay exits. The relay
   reports ``ready`` on its control socket; the parent then gives the devices point-to-point
   addresses with netlink (client 198.18.0.1, server 198.18.0.2, RFC 2544 benchmarking
   range; fd00:d7f0::1 and ::2 for IPv6) and brings them up.

   Several server namespaces make an anycast pool: every one has the same addresses, and
   the relay sends each client-to-server packet to the instance its flow hashes to (BLAKE2b
   of addresses and ports, so a connection stays on one instance, as behind an ECMP
   router); answers from any instance go to the client. The log says which instance.

2. Each packet read from one device is parsed (``packet.py``), logged, and judged in this
   order: a middlebox fault may drop it or strip its TFO option (fixing the checksum); then
   random loss (seeded RNG) may drop it. A surviving packet is scheduled on a heap at
   ``now + one-way delay + jitter`` (monotonic nanoseconds). Jitter never reorders a
   direction: a packet is never due before the previous one in the same direction, as on a
   single link.

3. The loop sleeps in ``select`` until the earliest due time or the next readable device,
   then writes every packet that is due. The timer slack is set to 1 µs (``PR_SET_TIMERSLACK``)
   and the relay runs at a real-time priority above the lab's timed servers and clients
   (``netns.WIRE_PRIORITY``), so the wake-up is neither rounded up nor queued behind busy
   processes, real-time ones included; the log keeps both the read time and the write time of
   every packet, so the accuracy is measured rather than assumed. (On a virtual machine,
   the host can still pause the whole guest for milliseconds now and then.)

4. Control: newline-delimited JSON over a Unix socket pair: ``packets`` (the log),
   ``stats`` (counts, failed writes, and how late packets left: whether the relay itself
   keeps up), ``clear``, ``configure`` (new delay, loss or faults on the fly) and
   ``stop``. End of file on the control socket (the parent died) also stops the relay.

Faults model middleboxes seen in the wild (RFC 7413 §7, and the PATHspider TFO study):
``drop-syn-data`` drops SYNs that carry payload, ``drop-syn-tfo`` drops SYNs with a TFO
option, ``strip-tfo-syn`` / ``strip-tfo-synack`` overwrite the TFO option with NOPs.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import hashlib
import heapq
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dnstfo.errors import LabError
from dnstfo.lab import packet
from dnstfo.lab.packet import TcpFlags

log = logging.getLogger(__name__)

TUN_NAME = "dtfo0"
"""Name of the TUN device in both namespaces (each namespace has its own)."""

_DEVICE_ENV = "DNSTFO_LAB_TUN"
"""How the relay process learns its TUN device's name."""

CLIENT_V4, SERVER_V4 = "198.18.0.1", "198.18.0.2"
CLIENT_V6, SERVER_V6 = "fd00:d7f0::1", "fd00:d7f0::2"

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PR_SET_TIMERSLACK = 29
_LOG_LIMIT = 200_000  # records kept; older ones are forgotten
_LATENESS_SAMPLES = 100_000  # the most recent packets' lateness, for the stats


class Fault(enum.Enum):
    """A middlebox misbehaviour the delay line can play."""

    DROP_SYN_DATA = "drop-syn-data"
    """Drop SYNs that carry payload."""
    STRIP_TFO_SYN = "strip-tfo-syn"
    """Overwrite the TFO option in SYNs with NOPs."""
    STRIP_TFO_SYNACK = "strip-tfo-synack"
    """Overwrite the TFO option in SYN-ACKs with NOPs."""
    DROP_SYN_TFO = "drop-syn-tfo"
    """Drop SYNs that carry a TFO option."""


class Direction(enum.Enum):
    """Which way a packet travels."""

    C2S = "c2s"
    """Client to server."""
    S2C = "s2c"
    """Server to client."""


class Action(enum.Enum):
    """What the delay line did with a packet."""

    FORWARDED = "forwarded"
    """Passed on unchanged after the delay."""
    STRIPPED = "stripped"
    """Passed on after the delay with its TFO option overwritten."""
    DROPPED = "dropped"
    """Dropped by a fault."""
    LOST = "lost"
    """Dropped by random loss."""


@dataclass(frozen=True, slots=True)
class DelayConfig:
    """How the delay line treats packets. Change it with ``dataclasses.replace``."""

    c2s_delay_ms: float = 0.0
    """One-way delay from client to server."""
    s2c_delay_ms: float = 0.0
    """One-way delay from server to client."""
    jitter_ms: float = 0.0
    """Each packet's delay varies uniformly by up to this much either way (never below 0)."""
    loss: float = 0.0
    """Probability (0..1) that a packet is lost, per packet and direction."""
    faults: frozenset[Fault] = field(default_factory=frozenset)
    """Middlebox faults to play."""
    seed: int = 0
    """Seed of the RNG behind jitter and loss."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the relay process)."""
        data = asdict(self)
        data["faults"] = sorted(f.value for f in self.faults)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DelayConfig:
        """The inverse of :meth:`to_json`."""
        return cls(**{**data, "faults": frozenset(Fault(f) for f in data["faults"])})


@dataclass(frozen=True, slots=True)
class PacketRecord:
    """One packet as the delay line saw it: the tests' ground truth."""

    index: int
    """Running number since the relay started (survives :meth:`DelayLine.clear`)."""
    direction: Direction
    """Which way it went."""
    received_ns: int
    """Monotonic time it was read from the TUN device."""
    sent_ns: int | None
    """Monotonic time it was written to the other device (None: dropped or not yet sent)."""
    action: Action
    """What the delay line did with it."""
    version: int
    """IP version (4 or 6)."""
    size: int
    """IP packet length in bytes."""
    tcp: bool
    """True for TCP segments; the fields below are meaningful only then."""
    sport: int
    """TCP source port."""
    dport: int
    """TCP destination port."""
    flags: TcpFlags
    """TCP flags."""
    tfo_option: bool
    """The segment carried a TFO option (before any stripping)."""
    cookie_len: int | None
    """Cookie length in that option (0: cookie request); None without an option."""
    tfo_experimental: bool
    """The option was the experimental kind 254 (magic 0xF989), not kind 34."""
    payload_len: int
    """Bytes of TCP payload."""
    instance: int = 0
    """The server instance the packet went to or came from (0 without an anycast pool)."""

    @property
    def is_syn(self) -> bool:
        """A connection-opening SYN (not a SYN-ACK)."""
        return self.tcp and TcpFlags.SYN in self.flags and TcpFlags.ACK not in self.flags

    @property
    def is_synack(self) -> bool:
        """A SYN-ACK."""
        return self.tcp and TcpFlags.SYN in self.flags and TcpFlags.ACK in self.flags

    @property
    def delay_ms(self) -> float | None:
        """Time spent inside the delay line, in milliseconds (None: never sent)."""
        return None if self.sent_ns is None else (self.sent_ns - self.received_ns) / 1e6

    def describe(self) -> str:
        """One line in the spirit of tcpdump, for logs and failure messages."""
        if not self.tcp:
            return f"#{self.index} {self.direction.value} ipv{self.version} {self.size}B"
        tfo = ""
        if self.cookie_len is not None:
            kind = "exp-tfo" if self.tfo_experimental else "tfo"
            tfo = f" {kind}(cookie {self.cookie_len})"
        return (
            f"#{self.index} {self.direction.value} {self.sport}>{self.dport} "
            f"[{self.flags.short()}]{tfo} len {self.payload_len} {self.action.value}"
        )


@dataclass(frozen=True, slots=True)
class RelayStats:
    """How the relay is doing: what it did with packets, and whether it kept its timing."""

    packets: int
    """Packets read since the relay started."""
    actions: dict[Action, int]
    """Packets per action (forwarded, stripped, dropped by a fault, lost)."""
    write_failures: int
    """Packets the relay could not write to the outgoing TUN device (its queue was full)."""
    in_flight: int
    """Packets waiting for their due time now."""
    late_ms_p50: float | None
    """Median lateness: time between a packet's due time and its write (recent packets)."""
    late_ms_p99: float | None
    """99th percentile of the lateness."""
    late_ms_max: float | None
    """Largest lateness among the recent packets."""


class DelayLine:
    """Handle on a running relay process; made by :func:`delay_line`.

    Attributes:
        config: the configuration the relay currently applies.
    """

    def __init__(self, proc: subprocess.Popen[bytes], control: socket.socket, config: DelayConfig):
        self.config = config
        self._proc = proc
        self._control = control
        self._buffer = b""
        self._owner = os.getpid()

    @property
    def pid(self) -> int:
        """The relay's process id."""
        return self._proc.pid

    def packets(self) -> list[PacketRecord]:
        """Returns the packet log since the start or the last :meth:`clear`, oldest first."""
        reply = self._request({"op": "packets"})
        return [_record_from_json(item) for item in reply["packets"]]

    def clear(self) -> None:
        """Forgets the packet log (record indexes keep counting)."""
        self._request({"op": "clear"})

    def stats(self) -> RelayStats:
        """Counts since the start and the lateness of recent packets (see :class:`RelayStats`)."""
        reply = self._request({"op": "stats"})
        return RelayStats(
            packets=reply["packets"],
            actions={Action(k): v for k, v in reply["actions"].items()},
            write_failures=reply["write_failures"],
            in_flight=reply["in_flight"],
            late_ms_p50=reply["late_ms_p50"],
            late_ms_p99=reply["late_ms_p99"],
            late_ms_max=reply["late_ms_max"],
        )

    def configure(self, config: DelayConfig) -> None:
        """Applies a new configuration; packets already in flight keep their due time."""
        self._request({"op": "configure", "config": config.to_json()})
        self.config = config

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the relay (its TUN devices vanish with it) and reaps it."""
        if self._proc.returncode is not None or os.getpid() != self._owner:
            return
        with contextlib.suppress(OSError):
            self._control.sendall(b'{"op": "stop"}\n')
        self._control.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("delay line %d did not stop; killing it", self._proc.pid)
            self._proc.kill()
            self._proc.wait()

    def _request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        if self._proc.poll() is not None:
            raise LabError(f"the delay line has exited (status {self._proc.returncode})")
        self._control.sendall(json.dumps(message).encode() + b"\n")
        reply = self._read_message(timeout)
        if "error" in reply:
            raise LabError(f"delay line: {reply['error']}")
        return reply

    def _read_message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self._control], [], [], max(remaining, 0))
            if not readable:
                raise LabError(f"the delay line did not answer within {timeout:g} s")
            chunk = self._control.recv(1 << 20)
            if not chunk:
                raise LabError("the delay line closed its control socket")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply


@contextlib.contextmanager
def delay_line(
    client_ns: Path,
    server_ns: Path | Sequence[Path],
    config: DelayConfig,
    *,
    start_timeout: float = 5.0,
    device: str = TUN_NAME,
) -> Iterator[DelayLine]:
    """Starts the relay between namespaces, yields its handle, and always stops it.

    The TUN devices are up but have no addresses yet: :mod:`dnstfo.lab.topology` adds them.

    Args:
        client_ns: the client namespace file (``/run/netns/NAME``).
        server_ns: the server namespace file, or several: an anycast pool whose flows
            are split by hash.
        config: delay, loss and faults to start with.
        start_timeout: seconds to wait for the relay to report ready.
        device: the TUN device's name in each namespace (a namespace on two delay
            lines, the middle of a chain, needs a name per line).

    Yields:
        The running delay line.

    Raises:
        LabError: the relay could not start.
    """
    servers = [server_ns] if isinstance(server_ns, Path) else list(server_ns)
    parent_end, child_end = socket.socketpair()
    argv = [
        sys.executable,
        "-m",
        "dnstfo.lab.delay",
        str(child_end.fileno()),
        json.dumps(config.to_json()),
        str(client_ns),
        *(str(path) for path in servers),
    ]
    env = {**os.environ, _DEVICE_ENV: device}
    proc = subprocess.Popen(argv, pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, env=env)
    child_end.close()
    line = DelayLine(proc, parent_end, config)
    try:
        hello = line._read_message(start_timeout)
        if "error" in hello:
            raise LabError(f"delay line failed to start: {hello['error']}")
        log.debug("delay line %d ready: %s", proc.pid, config)
        yield line
    finally:
        line.stop()
        parent_end.close()


_RECORD_FIELDS = tuple(f.name for f in fields(PacketRecord))
_SENT_NS = _RECORD_FIELDS.index("sent_ns")


def _record_from_json(item: list[Any]) -> PacketRecord:
    """A :class:`PacketRecord` from the relay's list, which holds its fields in order."""
    values = dict(zip(_RECORD_FIELDS, item, strict=True))
    values["direction"] = Direction(values["direction"])
    values["action"] = Action(values["action"])
    values["flags"] = TcpFlags(values["flags"])
    return PacketRecord(**values)


def flow_instance(addresses: bytes, ports: tuple[int, int] | None, count: int) -> int:
    """The anycast instance (0 to ``count - 1``) a client-to-server packet goes to.

    Args:
        addresses: source then destination address, packed (8 bytes, or 32 for IPv6).
        ports: TCP source and destination port; None for other packets.
        count: instances in the pool.
    """
    key = addresses if ports is None else addresses + struct.pack("!HH", *ports)
    # A mixing hash: CRC-32 is linear, so its low bits barely change between ports the
    # kernel hands out in steps of two, and consecutive flows would stay on one instance.
    digest = hashlib.blake2b(key, digest_size=4).digest()
    return int.from_bytes(digest, "big") % count


# --- the relay process ---------------------------------------------------------------------


def open_tun(name: str) -> int:
    """Opens a TUN device (IP packets, no packet-info header) in the current namespace.

    Returns:
        A non-blocking file descriptor; the device lives as long as it is open.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    ifreq = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
    fcntl.ioctl(fd, _TUNSETIFF, ifreq)
    return fd


class _Relay:
    """The relay loop; runs in its own process (see the theory of operation above)."""

    def __init__(
        self, control: socket.socket, client_fd: int, server_fds: list[int], config: DelayConfig
    ):
        self.control = control
        self.client_fd = client_fd
        self.server_fds = server_fds
        self.config = config
        self.rng = random.Random(config.seed)
        # (due, index, fd to write to, packet, its log record): the record gets its send time
        self.heap: list[tuple[int, int, int, bytes, list[Any]]] = []
        self.last_due = dict.fromkeys(Direction, 0)
        self.records: deque[list[Any]] = deque(maxlen=_LOG_LIMIT)
        self.count = 0
        self.actions = dict.fromkeys((a.value for a in Action), 0)
        self.write_failures = 0
        self.lateness: deque[int] = deque(maxlen=_LATENESS_SAMPLES)  # ns, most recent writes
        self.buffer = b""

    def run(self) -> None:
        # fd -> (direction, instance) of the packets read from it
        sources = {self.client_fd: (Direction.C2S, 0)}
        sources |= {fd: (Direction.S2C, i) for i, fd in enumerate(self.server_fds)}
        watched: list[socket.socket | int] = [self.control, *sources]
        while True:
            timeout = None
            if self.heap:
                timeout = max(0, self.heap[0][0] - time.monotonic_ns()) / 1e9
            readable, _, _ = select.select(watched, [], [], timeout)
            for fd in readable:
                if isinstance(fd, socket.socket):  # the control socket; the rest are TUN fds
                    if not self.handle_control():
                        return
                else:
                    self.drain(fd, *sources[fd])
            self.send_due()

    def drain(self, fd: int, direction: Direction, instance: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            self.receive(data, direction, time.monotonic_ns(), instance)

    def receive(self, data: bytes, direction: Direction, now: int, instance: int = 0) -> None:
        segment = packet.parse(data)
        if direction is Direction.C2S:
            instance = self.instance_for(data, segment)
            out = self.server_fds[instance]
        else:
            out = self.client_fd
        action = self.judge(segment)
        if action is Action.STRIPPED and segment is not None:
            data = packet.strip_tfo(data, segment)
        if action in (Action.FORWARDED, Action.STRIPPED) and self.rng.random() < self.config.loss:
            action = Action.LOST
        # The fields of PacketRecord, in order (sent_ns is filled in when it leaves).
        record = [self.count, direction.value, now, None, action.value, data[0] >> 4, len(data)]
        record += _NOT_TCP if segment is None else _tcp_fields(segment)
        record.append(instance)
        self.records.append(record)
        self.actions[action.value] += 1
        if action in (Action.FORWARDED, Action.STRIPPED):
            due = max(now + self.delay_ns(direction), self.last_due[direction])
            self.last_due[direction] = due
            heapq.heappush(self.heap, (due, self.count, out, data, record))
        self.count += 1

    def instance_for(self, data: bytes, segment: packet.TcpSegment | None) -> int:
        """The server instance a client packet goes to: its flow's hash (addresses, ports)."""
        if len(self.server_fds) == 1:
            return 0
        addresses = data[12:20] if data[0] >> 4 == 4 else data[8:40]
        ports = None if segment is None else (segment.sport, segment.dport)
        return flow_instance(addresses, ports, len(self.server_fds))

    def judge(self, segment: packet.TcpSegment | None) -> Action:
        faults = self.config.faults
        if segment is None or not faults:
            return Action.FORWARDED
        if segment.is_syn:
            if Fault.DROP_SYN_DATA in faults and segment.payload_len > 0:
                return Action.DROPPED
            if Fault.DROP_SYN_TFO in faults and segment.tfo is not None:
                return Action.DROPPED
            if Fault.STRIP_TFO_SYN in faults and segment.tfo is not None:
                return Action.STRIPPED
        if segment.is_synack and Fault.STRIP_TFO_SYNACK in faults and segment.tfo is not None:
            return Action.STRIPPED
        return Action.FORWARDED

    def delay_ns(self, direction: Direction) -> int:
        c = self.config
        base = c.c2s_delay_ms if direction is Direction.C2S else c.s2c_delay_ms
        if c.jitter_ms:
            base += self.rng.uniform(-c.jitter_ms, c.jitter_ms)
        return round(max(base, 0.0) * 1e6)

    def send_due(self) -> None:
        while self.heap and self.heap[0][0] <= time.monotonic_ns():
            due, index, out, data, record = heapq.heappop(self.heap)
            try:
                os.write(out, data)
            except OSError as exc:  # a full device queue is a loss, as on a real link
                log.debug("write failed for packet %d: %s", index, exc)
                self.write_failures += 1
                continue
            sent = record[_SENT_NS] = time.monotonic_ns()
            self.lateness.append(sent - due)

    def stats(self) -> dict[str, Any]:
        late = sorted(self.lateness)

        def ms(i: int) -> float | None:
            return round(late[i] / 1e6, 3) if late else None

        return {
            "packets": self.count,
            "actions": self.actions,
            "write_failures": self.write_failures,
            "in_flight": len(self.heap),
            "late_ms_p50": ms(len(late) // 2),
            "late_ms_p99": ms(len(late) * 99 // 100),
            "late_ms_max": ms(-1),
        }

    def handle_control(self) -> bool:
        """Serves control requests; returns False when the relay should stop."""
        chunk = self.control.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            message = json.loads(line)
            op = message.get("op")
            if op == "stop":
                return False
            if op == "packets":
                reply: dict[str, Any] = {"packets": list(self.records)}
            elif op == "clear":
                self.records.clear()
                reply = {"ok": True}
            elif op == "stats":
                reply = self.stats()
            elif op == "configure":
                self.config = DelayConfig.from_json(message["config"])
                self.rng = random.Random(self.config.seed)
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
            self.control.sendall(json.dumps(reply).encode() + b"\n")
        return True


_NOT_TCP = (False, 0, 0, 0, False, None, False, 0)
"""The TCP fields of a record (``tcp`` to ``payload_len``) for a packet that is not TCP."""


def _tcp_fields(segment: packet.TcpSegment) -> tuple[Any, ...]:
    """The TCP fields of a record (``tcp`` to ``payload_len``), in PacketRecord's order."""
    tfo = segment.tfo
    return (
        True,
        segment.sport,
        segment.dport,
        int(segment.flags),
        tfo is not None,
        None if tfo is None else tfo.cookie_len,
        tfo is not None and tfo.experimental,
        segment.payload_len,
    )


def _relay_main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group; the parent decides when the relay stops
    # (it closes the control socket), so the lab is torn down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(argv[0]))
    config = DelayConfig.from_json(json.loads(argv[1]))
    client_ns, server_namespaces = argv[2], argv[3:]
    from dnstfo.lab.netns import WIRE_PRIORITY, realtime_priority, setns

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)  # 1 µs: wake up on time
        realtime_priority(WIRE_PRIORITY)  # on time even behind busy (timed) processes
        device = os.environ.get(_DEVICE_ENV, TUN_NAME)
        setns(client_ns)
        client_fd = open_tun(device)
        server_fds = []
        for server_ns in server_namespaces:
            setns(server_ns)
            server_fds.append(open_tun(device))
    except Exception as exc:
        control.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        return 1
    control.sendall(b'{"ready": true}\n')
    relay = _Relay(control, client_fd, server_fds, config)
    relay.run()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(_relay_main(sys.argv[1:]))

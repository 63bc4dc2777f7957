"""The kernel's per-destination TCP metrics cache, where Fast Open cookies live.

Speaks the generic netlink family ``tcp_metrics`` (include/uapi/linux/tcp_metrics.h,
net/ipv4/tcp_metrics.c), what ``ip tcp_metrics`` does: dump entries, get or delete one, flush.

Theory of operation: a request is one netlink message (nlmsghdr + genlmsghdr +
attributes); the kernel answers with entries (a dump ends with NLMSG_DONE) or with
NLMSG_ERROR. Entries are keyed by destination and source address; a client keeps one
cookie per pair, so ``lookup`` returns every entry for a destination.

This module uses the stdlib socket and struct rather than pyroute2: importing
pyroute2 costs ~190 ms (its package imports every family), more than Fast Open saves
on a 100 ms path, and ``dnstfo query`` reads this cache on every run.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dnstfo.errors import KernelFeatureError, NetworkError, PermissionNeeded

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF

FAMILY = "tcp_metrics"
VERSION = 1
CMD_GET = 1
CMD_DEL = 2

# TCP_METRICS_ATTR_*
ATTR_ADDR_IPV4 = 1
ATTR_ADDR_IPV6 = 2
ATTR_AGE = 3
ATTR_VALS = 6
ATTR_FOPEN_MSS = 7
ATTR_FOPEN_SYN_DROPS = 8
ATTR_FOPEN_SYN_DROP_TS = 9
ATTR_FOPEN_COOKIE = 10
ATTR_SADDR_IPV4 = 11
ATTR_SADDR_IPV6 = 12
# Nested in ATTR_VALS: TCP_METRIC_* + 1
VAL_RTT_US = 6
VAL_RTTVAR_US = 7

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True, slots=True)
class TcpMetricsEntry:
    """One entry of the cache: what the kernel remembers about a destination."""

    daddr: str
    """Destination address."""
    saddr: str | None
    """Source address the entry belongs to."""
    age_ms: int | None
    """Milliseconds since the entry was last updated."""
    cookie: bytes | None
    """The Fast Open cookie the server gave, or None (none cached)."""
    fo_mss: int | None
    """MSS remembered for Fast Open."""
    fo_syn_drops: int | None
    """SYNs with data that got no answer (the kernel backs off after them)."""
    fo_syn_drop_age_ms: int | None
    """Milliseconds since the last such drop."""
    rtt_us: int | None
    """Cached smoothed RTT."""
    rttvar_us: int | None
    """Cached RTT variance."""


def _attr(kind: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n % 4)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + _NLA.size <= len(data):
        n, kind = _NLA.unpack_from(data, pos)
        if n < _NLA.size:
            return
        yield kind & NLA_TYPE_MASK, data[pos + _NLA.size : pos + n]
        pos += (n + 3) & ~3


def _addr_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _addr_attrs(address: str, v4: int, v6: int) -> bytes:
    ip = ipaddress.ip_address(address)
    return _attr(v4 if ip.version == 4 else v6, ip.packed)


def _entry(attrs: bytes) -> TcpMetricsEntry:
    f: dict[int, bytes] = dict(_attrs(attrs))
    vals: dict[int, int] = {
        k: struct.unpack("=I", v[:4])[0] for k, v in _attrs(f.get(ATTR_VALS, b"")) if len(v) >= 4
    }

    def u(kind: int, fmt: str) -> int | None:
        raw = f.get(kind)
        return struct.unpack_from(fmt, raw)[0] if raw and len(raw) >= struct.calcsize(fmt) else None

    daddr = f.get(ATTR_ADDR_IPV4) or f.get(ATTR_ADDR_IPV6) or b""
    saddr = f.get(ATTR_SADDR_IPV4) or f.get(ATTR_SADDR_IPV6)
    return TcpMetricsEntry(
        daddr=_addr_text(daddr),
        saddr=_addr_text(saddr) if saddr else None,
        age_ms=u(ATTR_AGE, "=Q"),
        cookie=f.get(ATTR_FOPEN_COOKIE) or None,
        fo_mss=u(ATTR_FOPEN_MSS, "=H"),
        fo_syn_drops=u(ATTR_FOPEN_SYN_DROPS, "=H"),
        fo_syn_drop_age_ms=u(ATTR_FOPEN_SYN_DROP_TS, "=Q"),
        # Stored scaled as the socket keeps them (srtt << 3, mdev << 2), as ip(8) shows.
        rtt_us=vals[VAL_RTT_US] >> 3 if VAL_RTT_US in vals else None,
        rttvar_us=vals[VAL_RTTVAR_US] >> 2 if VAL_RTTVAR_US in vals else None,
    )


class _Genl:
    """One generic netlink socket, resolved to the tcp_metrics family."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.seq = 0
        try:
            reply = self.request(
                GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _attr(CTRL_ATTR_FAMILY_NAME, b"tcp_metrics\0"), 0
            )
        except NetworkError as exc:
            self.sock.close()
            if exc.errno == errno.ENOENT:
                raise KernelFeatureError(
                    "this kernel has no tcp_metrics netlink family", "it needs Linux 3.8+"
                ) from exc
            raise
        self.family = next(
            struct.unpack("=H", v[:2])[0]
            for body in reply
            for k, v in _attrs(body)
            if k == CTRL_ATTR_FAMILY_ID
        )

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, cmd: int, attrs: bytes, flags: int) -> list[bytes]:
        """Sends one request; returns the attribute blocks of every reply message."""
        self.seq += 1
        body = _GENLHDR.pack(cmd, VERSION, 0) + attrs
        head = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0)
        self.sock.send(head + body)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                n, mtype, _, seq, _ = _NLMSGHDR.unpack_from(data, pos)
                payload = data[pos + _NLMSGHDR.size : pos + n]
                pos += (n + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetworkError("tcp_metrics request failed", code)
                    return out  # the ACK
                out.append(payload[_GENLHDR.size :])
            if not flags & (NLM_F_DUMP | NLM_F_ACK):
                return out

    def __enter__(self) -> _Genl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def entries() -> list[TcpMetricsEntry]:
    """Returns every entry of the caller's namespace's cache (what ``ip tcp_metrics`` shows)."""
    with _Genl() as nl:
        return [_entry(b) for b in nl.request(nl.family, CMD_GET, b"", NLM_F_DUMP)]


def lookup(daddr: str) -> list[TcpMetricsEntry]:
    """Returns the entries for a destination address (one per source address)."""
    want = ipaddress.ip_address(daddr)
    return [e for e in entries() if ipaddress.ip_address(e.daddr) == want]


def cookie_for(daddr: str, saddr: str | None = None) -> bytes | None:
    """Returns the cached Fast Open cookie for a destination (and source), or None."""
    for e in lookup(daddr):
        if e.cookie and (saddr is None or e.saddr is None or e.saddr == saddr):
            return e.cookie
    return None


def _packed(address: str, v4: int, v6: int) -> bytes:
    # inet_pton rather than ipaddress: the probe builds these for every connection.
    try:
        return _attr(v4, socket.inet_pton(socket.AF_INET, address))
    except OSError:
        return _attr(v6, socket.inet_pton(socket.AF_INET6, address))


def _pair_attrs(daddr: str, saddr: str | None) -> bytes:
    attrs = _packed(daddr, ATTR_ADDR_IPV4, ATTR_ADDR_IPV6)
    if saddr is not None:
        attrs += _packed(saddr, ATTR_SADDR_IPV4, ATTR_SADDR_IPV6)
    return attrs


class Cache:
    """One open netlink socket on the cache, for many targeted reads and deletes.

    ``get`` asks the kernel for the one entry of an address pair (``tcp_metrics_nl_cmd_get``
    walks a single hash chain), instead of dumping the whole cache: the probe reads it
    before and after every connection. Close it when done (or use ``with``).

    Raises:
        KernelFeatureError: the kernel has no tcp_metrics family.
    """

    def __init__(self) -> None:
        self._nl = _Genl()

    def _get(self, daddr: str, saddr: str | None) -> bytes | None:
        try:
            replies = self._nl.request(self._nl.family, CMD_GET, _pair_attrs(daddr, saddr), 0)
        except NetworkError as exc:
            if exc.errno == errno.ESRCH:
                return None
            raise
        return replies[0] if replies else None

    def get(self, daddr: str, saddr: str | None = None) -> TcpMetricsEntry | None:
        """The entry for (source, destination), or None when nothing is cached.

        Without ``saddr`` the kernel returns the first entry for the destination.
        """
        attrs = self._get(daddr, saddr)
        return None if attrs is None else _entry(attrs)

    def cookie(self, daddr: str, saddr: str | None = None) -> bytes | None:
        """The Fast Open cookie cached for (source, destination), or None."""
        return self.cookie_entry(daddr, saddr)[1]

    def cookie_entry(self, daddr: str, saddr: str | None = None) -> tuple[bool, bytes | None]:
        """Whether an entry exists for (source, destination), and its cookie (or None).

        A connection that asked for Fast Open always leaves an entry
        (``tcp_fastopen_cache_set``), so none at all right after one means the kernel
        reclaimed it for another destination.
        """
        attrs = self._get(daddr, saddr)
        if attrs is None:
            return False, None
        return True, next((v for k, v in _attrs(attrs) if k == ATTR_FOPEN_COOKIE and v), None)

    def delete(self, daddr: str, saddr: str | None = None) -> None:
        """Deletes the entry for (source, destination); every source's without ``saddr``.

        Raises:
            PermissionNeeded: not root / CAP_NET_ADMIN.
        """
        _delete_on(self._nl, _pair_attrs(daddr, saddr), "deleting from")

    def close(self) -> None:
        """Closes the netlink socket."""
        self._nl.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(daddr: str, saddr: str | None = None) -> TcpMetricsEntry | None:
    """The entry for (source, destination), or None (one targeted request, no dump)."""
    with Cache() as cache:
        return cache.get(daddr, saddr)


def _modify(attrs: bytes, what: str) -> None:
    with _Genl() as nl:
        _delete_on(nl, attrs, what)


def _delete_on(nl: _Genl, attrs: bytes, what: str) -> None:
    try:
        nl.request(nl.family, CMD_DEL, attrs, NLM_F_ACK)
    except NetworkError as exc:
        if exc.errno == errno.EPERM:
            who = "root" if os.geteuid() else "CAP_NET_ADMIN in this namespace"
            raise PermissionNeeded(f"{what} the TCP metrics cache needs {who}") from exc
        if exc.errno == errno.ESRCH:
            return  # nothing cached for that address: already gone
        raise


def delete(daddr: str, saddr: str | None = None) -> None:
    """Deletes the entries for a destination (and source): its cookies are forgotten.

    Raises:
        PermissionNeeded: not root / CAP_NET_ADMIN.
    """
    _modify(_pair_attrs(daddr, saddr), "deleting from")


def flush() -> None:
    """Deletes every entry of the caller's namespace's cache.

    Raises:
        PermissionNeeded: not root / CAP_NET_ADMIN.
    """
    _modify(b"", "flushing")

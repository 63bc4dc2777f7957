"""TCP Fast Open sockets: listeners, clients that send in the SYN, and listener keys.

Sockets are made here and handed over (asyncio ``sock=``, a driver's own loop), so this
is the one place that knows the socket options. Each option is detected before use; a
missing one raises ``KernelFeatureError`` with the fix.

Option values come from include/uapi/linux/tcp.h; Python's ``socket`` module lacks most.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import cache

from dnstfo.errors import FastOpenDisabled, KernelFeatureError, NetworkError, UsageError

TCP_FASTOPEN = 23
TCP_FASTOPEN_CONNECT = 30  # Linux 4.11
TCP_FASTOPEN_KEY = 33  # Linux 5.0 (32-byte primary + backup since 5.4)
TCP_FASTOPEN_NO_COOKIE = 34  # Linux 4.15
MSG_FASTOPEN = 0x20000000

DEFAULT_TFO_QUEUE = 1024
"""Pending Fast Open requests (SYN data not yet accepted) a listener may hold."""
DEFAULT_BACKLOG = 4096
"""Accept queue length: small backlogs overflow when many clients open at once."""

_OPTION_NAMES = {
    TCP_FASTOPEN: ("TCP_FASTOPEN", "Linux 3.7"),
    TCP_FASTOPEN_CONNECT: ("TCP_FASTOPEN_CONNECT", "Linux 4.11"),
    TCP_FASTOPEN_KEY: ("TCP_FASTOPEN_KEY", "Linux 5.0 (a backup key needs 5.4)"),
    TCP_FASTOPEN_NO_COOKIE: ("TCP_FASTOPEN_NO_COOKIE", "Linux 4.15"),
}


@cache
def supports(option: int) -> bool:
    """Whether this kernel knows a TCP socket option (tried on a scratch socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            if option == TCP_FASTOPEN_KEY:
                probe.getsockopt(socket.IPPROTO_TCP, option, 16)
            else:
                probe.getsockopt(socket.IPPROTO_TCP, option)
        except OSError as exc:
            return exc.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP)
    return True


def _require(option: int) -> None:
    if not supports(option):
        name, since = _OPTION_NAMES[option]
        raise KernelFeatureError(f"this kernel lacks {name}", f"it needs {since} or later")


def _setopt(sock: socket.socket, option: int, value: int | bytes) -> None:
    _require(option)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP and option == TCP_FASTOPEN_CONNECT:
            raise _client_off() from exc
        name = _OPTION_NAMES.get(option, (str(option), ""))[0]
        raise NetworkError.from_oserror(f"setting {name}", exc) from exc


def _client_off() -> FastOpenDisabled:
    """The error for EOPNOTSUPP on a client Fast Open call: the sysctl's client bit is off."""
    from dnstfo.kernel.sysctl import TfoMode, enable_hint

    return FastOpenDisabled(
        "client TCP Fast Open is off in this network namespace",
        f"enable it with: {enable_hint(TfoMode.CLIENT)}",
    )


def family_of(host: str) -> socket.AddressFamily:
    """Returns AF_INET or AF_INET6 for a literal address.

    Raises:
        UsageError: not an IP address literal.
    """
    # inet_pton first: cheap, and this runs for every client connection of a probe.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    try:  # what inet_pton refuses but ipaddress takes (a scoped IPv6 address)
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise UsageError(f"not an IP address: {host!r}") from exc
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


@dataclass(frozen=True, slots=True)
class TfoKey:
    """A listener's Fast Open key: a 16-byte primary and an optional 16-byte backup.

    Cookies are made with the primary and accepted with either, so a new key can be
    rolled out with the old one as backup without rejecting cookies in flight.
    """

    primary: bytes
    """Key that makes new cookies."""
    backup: bytes | None = None
    """Key whose cookies are still accepted."""

    def __post_init__(self) -> None:
        for key in (self.primary, self.backup):
            if key is not None and len(key) != 16:
                raise UsageError(f"a TFO key is 16 bytes, not {len(key)}")

    def raw(self) -> bytes:
        """The bytes ``setsockopt(TCP_FASTOPEN_KEY)`` takes (16 or 32)."""
        return self.primary + (self.backup or b"")

    def text(self) -> str:
        """The kernel's text form, as in ``net.ipv4.tcp_fastopen_key``."""
        return ",".join(_key_text(k) for k in (self.primary, self.backup) if k is not None)

    @classmethod
    def parse(cls, text: str) -> TfoKey:
        """Parses ``xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx[,backup]``.

        Raises:
            UsageError: not in that form.
        """
        parts = [p.strip() for p in text.strip().split(",")]
        if not 1 <= len(parts) <= 2:
            raise UsageError("a TFO key is one or two keys separated by a comma")
        keys = [_key_bytes(p) for p in parts]
        return cls(keys[0], keys[1] if len(keys) == 2 else None)

    def with_backup(self, old: TfoKey) -> TfoKey:
        """This key as primary, ``old``'s primary as backup (for rotation)."""
        return TfoKey(self.primary, old.primary)


def _key_text(key: bytes) -> str:
    # The kernel reads each group as a host u32 and stores it little-endian
    # (proc_tcp_fastopen_key in net/ipv4/sysctl_net_ipv4.c).
    return "-".join(f"{w:08x}" for w in struct.unpack("<4I", key))


def _key_bytes(text: str) -> bytes:
    groups = text.split("-")
    try:
        if len(groups) != 4 or any(len(g) != 8 for g in groups):
            raise ValueError
        return struct.pack("<4I", *(int(g, 16) for g in groups))
    except ValueError as exc:
        want = "xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx"
        raise UsageError(f"not a TFO key (want {want}): {text!r}") from exc


def set_listener_key(sock: socket.socket, key: TfoKey) -> None:
    """Sets a listener's own Fast Open key, overriding the namespace's key."""
    _setopt(sock, TCP_FASTOPEN_KEY, key.raw())


def listener_key(sock: socket.socket) -> TfoKey:
    """Returns the key a listener uses (its own, or else the namespace's)."""
    _require(TCP_FASTOPEN_KEY)
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_KEY, 32)
    return TfoKey(raw[:16], raw[16:32] if len(raw) == 32 else None)


def tfo_listener(
    address: tuple[str, int],
    *,
    queue_len: int = DEFAULT_TFO_QUEUE,
    backlog: int = DEFAULT_BACKLOG,
    key: TfoKey | None = None,
    reuseport: bool = False,
    no_cookie: bool = False,
) -> socket.socket:
    """Makes a bound, listening TCP socket that accepts data in the SYN.

    Accepted sockets inherit TCP_NODELAY from it: answers to pipelined queries must not
    wait behind the client's delayed ACK.

    Args:
        address: (host, port); port 0 picks a free one.
        queue_len: TCP_FASTOPEN queue length (pending SYN-data connections).
        backlog: listen() backlog.
        key: the listener's own cookie key; None keeps the namespace's.
        reuseport: set SO_REUSEPORT, for several processes on one port.
        no_cookie: accept SYN data without a cookie (TCP_FASTOPEN_NO_COOKIE).

    Raises:
        NetworkError: bind or listen failed (errno kept).
        KernelFeatureError: a requested option is missing.
    """
    host, port = address
    family = family_of(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise NetworkError.from_oserror(f"binding TCP {host} port {port}", exc) from exc
        _setopt(sock, TCP_FASTOPEN, queue_len)
        if key is not None:
            set_listener_key(sock, key)
        if no_cookie:
            _setopt(sock, TCP_FASTOPEN_NO_COOKIE, 1)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def client_socket(
    family: socket.AddressFamily,
    *,
    fastopen_connect: bool = False,
    no_cookie: bool = False,
    source: tuple[str, int] | None = None,
) -> socket.socket:
    """Makes a TCP client socket ready to put its first write in the SYN.

    Args:
        family: AF_INET or AF_INET6.
        fastopen_connect: set TCP_FASTOPEN_CONNECT, so that ``connect()`` returns at once
            and the first write goes out in the SYN (the alternative to ``send_in_syn``).
        no_cookie: send SYN data without a cookie (TCP_FASTOPEN_NO_COOKIE), for servers
            that accept it; first contact then takes one round trip.
        source: address to bind before connecting.

    Raises:
        FastOpenDisabled: ``fastopen_connect`` with the sysctl's client bit off.
        KernelFeatureError: a requested option is missing.
        NetworkError: binding the source address failed.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if fastopen_connect:
            _setopt(sock, TCP_FASTOPEN_CONNECT, 1)
        if no_cookie:
            _setopt(sock, TCP_FASTOPEN_NO_COOKIE, 1)
        if source is not None:
            try:
                sock.bind(source)
            except OSError as exc:
                raise NetworkError.from_oserror(f"binding source {source[0]}", exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def send_in_syn(sock: socket.socket, data: bytes, address: tuple[str, int]) -> int:
    """Connects and sends ``data``, in the SYN when a cookie allows (``MSG_FASTOPEN``).

    On a blocking socket this returns once connected, with all of ``data`` sent (in the
    SYN, or after the handshake when no cookie was cached). On a non-blocking socket it
    may return fewer bytes or raise BlockingIOError (EINPROGRESS) with nothing sent:
    the caller then waits for the connection and sends the rest.

    Raises:
        FastOpenDisabled: the client bit of net.ipv4.tcp_fastopen is off.
        NetworkError: the connection failed (errno kept).
    """
    try:
        return sock.sendto(data, MSG_FASTOPEN, address)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            raise _client_off() from exc
        doing = f"connecting to {address[0]} port {address[1]}"
        raise NetworkError.from_oserror(doing, exc) from exc


# UDP on a wildcard address: the kernel picks a reply's source address by routing, which
# on a host with several addresses need not be the one the query was sent to (and clients
# reject such replies). IP_PKTINFO / IPV6_RECVPKTINFO tell us, per datagram, the address
# it was sent to; passing it back in sendmsg's ancillary data makes it the reply's source.
IP_PKTINFO = 8  # include/uapi/linux/in.h; absent from Python's socket module
_IPV6_PKTINFO = socket.IPV6_PKTINFO
PKTINFO_SPACE = socket.CMSG_SPACE(20)
"""Ancillary buffer size for one ``in_pktinfo`` (12 bytes) or ``in6_pktinfo`` (20)."""
_NO_IFINDEX = bytes(4)


def is_wildcard(host: str) -> bool:
    """Whether ``host`` is the unspecified address (``0.0.0.0`` or ``::``)."""
    return ipaddress.ip_address(host).is_unspecified


def enable_pktinfo(sock: socket.socket) -> None:
    """Asks the kernel for each datagram's destination address (see :func:`reply_pktinfo`).

    Raises:
        NetworkError: the option could not be set (errno kept).
    """
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError as exc:
        raise NetworkError.from_oserror("setting IP_PKTINFO", exc) from exc


def reply_pktinfo(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The ancillary data for ``sendmsg`` that sends a reply from the query's address.

    The interface index is left 0, as Knot DNS does, so routing still picks the way out.

    Args:
        ancdata: what ``recvmsg`` returned for the query.

    Returns:
        The reply's ancillary data (empty when the query carried no pktinfo).
    """
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {ifindex; spec_dst; addr}: the source goes in spec_dst.
            return [(level, kind, _NO_IFINDEX + data[8:12] + data[8:12])]
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo {addr; ifindex}
            return [(level, kind, data[:16] + _NO_IFINDEX)]
    return []


def pktinfo_address(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The address a datagram was sent to, from its ``recvmsg`` pktinfo; None without one."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None

"""TCP Fast Open sysctls and the kernel's TcpExt Fast Open counters.

``/proc/sys/net`` and ``/proc/self/net`` follow the network namespace of the process
that reads them, so everything here describes the caller's namespace.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from dnstfo.errors import KernelFeatureError, PermissionNeeded

# Plain paths and open(): pathlib costs start-up time that ``dnstfo query`` pays on every run.
PROC_SYS = "/proc/sys"
NETSTAT = "/proc/self/net/netstat"

FASTOPEN = "net.ipv4.tcp_fastopen"
BLACKHOLE_TIMEOUT = "net.ipv4.tcp_fastopen_blackhole_timeout_sec"
FASTOPEN_KEY = "net.ipv4.tcp_fastopen_key"


class TfoMode(enum.IntFlag):
    """Bits of ``net.ipv4.tcp_fastopen`` (Documentation/networking/ip-sysctl.rst)."""

    CLIENT = 0x1
    """Send data in the SYN when the application asks (MSG_FASTOPEN)."""
    SERVER = 0x2
    """Accept data in the SYN on listeners that set TCP_FASTOPEN."""
    CLIENT_NO_COOKIE = 0x4
    """Send data in the SYN without a cookie, for every client socket."""
    SERVER_NO_COOKIE = 0x200
    """Accept SYN data without any cookie check."""
    SERVER_ANY_LISTENER = 0x400
    """Enable Fast Open on every listener, without the TCP_FASTOPEN option."""

    def describe(self) -> list[str]:
        """Returns each bit set, in words."""
        return [f"{str(flag.name).lower()} (0x{flag.value:x})" for flag in TfoMode if flag in self]


def _path(name: str) -> str:
    return f"{PROC_SYS}/{name.replace('.', '/')}"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_sysctl(name: str) -> str:
    """Returns a sysctl's value as text, stripped.

    Raises:
        KernelFeatureError: this kernel has no such sysctl.
    """
    try:
        return _read(_path(name)).strip()
    except FileNotFoundError as exc:
        raise KernelFeatureError(
            f"this kernel has no {name}", "TCP Fast Open needs Linux 3.7+ (4.11+ for all of it)"
        ) from exc


def write_sysctl(name: str, value: str | int) -> None:
    """Sets a sysctl in the caller's network namespace.

    Raises:
        PermissionNeeded: not root.
        KernelFeatureError: this kernel has no such sysctl.
    """
    try:
        with open(_path(name), "w") as f:
            f.write(f"{value}\n")
    except PermissionError as exc:
        raise PermissionNeeded(f"setting {name} needs root (sysctl -w {name}={value})") from exc
    except FileNotFoundError as exc:
        raise KernelFeatureError(f"this kernel has no {name}", "upgrade the kernel") from exc


def fastopen_mode() -> TfoMode:
    """Returns ``net.ipv4.tcp_fastopen`` as flags."""
    return TfoMode(int(read_sysctl(FASTOPEN), 0))


def blackhole_timeout() -> int | None:
    """Returns the blackhole back-off in seconds (0: detection off), None if absent."""
    try:
        return int(read_sysctl(BLACKHOLE_TIMEOUT))
    except KernelFeatureError:
        return None


def server_enabled(mode: TfoMode | None = None) -> bool:
    """Whether listeners that set TCP_FASTOPEN accept SYN data in this namespace."""
    mode = fastopen_mode() if mode is None else mode
    return bool(mode & (TfoMode.SERVER | TfoMode.SERVER_ANY_LISTENER))


def client_enabled(mode: TfoMode | None = None) -> bool:
    """Whether client sockets may send data in the SYN in this namespace."""
    mode = fastopen_mode() if mode is None else mode
    return bool(mode & TfoMode.CLIENT)


def enable_hint(needed: TfoMode) -> str:
    """The command that adds ``needed`` to the current mode, e.g. for error messages."""
    try:
        current = fastopen_mode()
    except KernelFeatureError:
        current = TfoMode(0)
    return f"sysctl -w {FASTOPEN}={int(current | needed)}"


@dataclass(frozen=True, slots=True)
class FastOpenCounters:
    """TcpExt counters about Fast Open from ``/proc/net/netstat`` (a snapshot)."""

    active: int = 0
    """TCPFastOpenActive: SYNs with data whose data was acked."""
    active_fail: int = 0
    """TCPFastOpenActiveFail: SYN data not acked, or SYN retransmitted without data."""
    passive: int = 0
    """TCPFastOpenPassive: connections accepted with data in the SYN."""
    passive_fail: int = 0
    """TCPFastOpenPassiveFail: SYNs with an invalid cookie."""
    passive_alt_key: int = 0
    """TCPFastOpenPassiveAltKey: cookies accepted with the backup key."""
    cookie_reqd: int = 0
    """TCPFastOpenCookieReqd: SYNs asking for a cookie."""
    listen_overflow: int = 0
    """TCPFastOpenListenOverflow: SYN data refused because the TFO queue was full."""
    blackhole: int = 0
    """TCPFastOpenBlackhole: times active Fast Open was disabled after a suspected blackhole."""
    syn_retrans: int = 0
    """TCPSynRetrans: SYN and SYN-ACK retransmissions."""

    def delta(self, before: FastOpenCounters) -> FastOpenCounters:
        """Returns ``self - before``, field by field."""
        return FastOpenCounters(
            **{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)}
        )

    def nonzero(self) -> dict[str, int]:
        """The counters that are not zero, by field name."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name))}


_COUNTER_NAMES = {
    "TCPFastOpenActive": "active",
    "TCPFastOpenActiveFail": "active_fail",
    "TCPFastOpenPassive": "passive",
    "TCPFastOpenPassiveFail": "passive_fail",
    "TCPFastOpenPassiveAltKey": "passive_alt_key",
    "TCPFastOpenCookieReqd": "cookie_reqd",
    "TCPFastOpenListenOverflow": "listen_overflow",
    "TCPFastOpenBlackhole": "blackhole",
    "TCPSynRetrans": "syn_retrans",
}

KERNEL_NAMES = {field: kernel for kernel, field in _COUNTER_NAMES.items()}
"""The TcpExt name of each :class:`FastOpenCounters` field (``active`` -> TCPFastOpenActive)."""

MEANINGS = {
    "active": "our SYNs carried data and the server acknowledged it (queries sent with TFO)",
    "active_fail": "our SYN data was not acknowledged, or the SYN was resent without it",
    "passive": "connections we accepted with data in the SYN (queries served with TFO)",
    "passive_fail": "SYNs with data and a cookie we did not accept (a stale or forged cookie)",
    "passive_alt_key": "cookies accepted with the backup key (after a key rotation)",
    "cookie_reqd": "SYNs that asked us for a cookie (a client's first TFO connection)",
    "listen_overflow": "SYN data refused because a listener's TFO queue was full",
    "blackhole": "times active TFO was paused after a suspected middlebox blackhole",
    "syn_retrans": "SYN and SYN-ACK retransmissions (any TCP connection, not only TFO)",
}
"""Each :class:`FastOpenCounters` field in words, for people (``dnstfo doctor``)."""


def parse_netstat(text: str) -> FastOpenCounters:
    """Parses ``/proc/net/netstat`` text (pairs of name and value lines per group)."""
    lines = text.splitlines()
    values: dict[str, int] = {}
    for head, body in zip(lines[::2], lines[1::2], strict=False):
        if not head.startswith("TcpExt:"):
            continue
        for key, value in zip(head.split()[1:], body.split()[1:], strict=False):
            if key in _COUNTER_NAMES:
                values[_COUNTER_NAMES[key]] = int(value)
    return FastOpenCounters(**values)


def read_counters() -> FastOpenCounters:
    """Returns a snapshot of the caller's namespace's Fast Open counters."""
    return parse_netstat(_read(NETSTAT))

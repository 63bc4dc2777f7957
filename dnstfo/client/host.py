"""The host's TCP Fast Open state, explained, and the fix for what is missing.

Read from the caller's network namespace: the ``net.ipv4.tcp_fastopen`` bits, the blackhole
back-off, whether a server key is set, the socket options the kernel knows and the TcpExt
counters. ``plan_fix`` is pure: it says which bits to add and the line that makes them
permanent; ``apply_fix`` writes the sysctl (root).
"""

from __future__ import annotations

from dataclasses import dataclass

from dnstfo.errors import KernelFeatureError, PermissionNeeded
from dnstfo.kernel import sysctl
from dnstfo.kernel.sockets import (
    TCP_FASTOPEN_CONNECT,
    TCP_FASTOPEN_KEY,
    TCP_FASTOPEN_NO_COOKIE,
    supports,
)
from dnstfo.kernel.sysctl import FastOpenCounters, TfoMode

SYSCTL_D_FILE = "/etc/sysctl.d/60-dnstfo.conf"
"""Where ``doctor --fix`` suggests the permanent setting goes."""

NEEDED = TfoMode.CLIENT | TfoMode.SERVER
"""Bits a host needs to both query and serve with TFO (the value 3)."""


@dataclass(frozen=True, slots=True)
class HostState:
    """What this network namespace says about TCP Fast Open."""

    mode: TfoMode | None
    """net.ipv4.tcp_fastopen (None: this kernel has no such sysctl)."""
    blackhole_timeout_s: int | None
    """net.ipv4.tcp_fastopen_blackhole_timeout_sec (0: detection off)."""
    key_set: bool | None
    """Whether net.ipv4.tcp_fastopen_key is non-zero (None: unreadable, needs root)."""
    fastopen_connect: bool
    """The kernel knows TCP_FASTOPEN_CONNECT (4.11+)."""
    no_cookie: bool
    """The kernel knows TCP_FASTOPEN_NO_COOKIE (4.15+)."""
    listener_key: bool
    """The kernel knows TCP_FASTOPEN_KEY (5.0+)."""
    counters: FastOpenCounters
    """TcpExt Fast Open counters since boot (or namespace creation)."""

    @property
    def client_ready(self) -> bool:
        """Queries can ride in the SYN."""
        return self.mode is not None and sysctl.client_enabled(self.mode)

    @property
    def server_ready(self) -> bool:
        """Listeners that ask for TFO accept SYN data."""
        return self.mode is not None and sysctl.server_enabled(self.mode)


@dataclass(frozen=True, slots=True)
class FixPlan:
    """What ``--fix`` would do."""

    current: int
    """The value now."""
    wanted: int
    """The value after the fix (``current | 3``)."""
    sysctl_line: str
    """The line for /etc/sysctl.d to make it permanent."""

    @property
    def needed(self) -> bool:
        """Whether anything changes."""
        return self.current != self.wanted


def read_state() -> HostState:
    """Reads the caller's namespace's TFO state (no changes)."""
    try:
        mode: TfoMode | None = sysctl.fastopen_mode()
    except KernelFeatureError:
        mode = None
    try:
        key = sysctl.read_sysctl(sysctl.FASTOPEN_KEY)
        key_set: bool | None = any(c not in "0-," for c in key)
    except (KernelFeatureError, PermissionError):
        key_set = None
    return HostState(
        mode=mode,
        blackhole_timeout_s=sysctl.blackhole_timeout(),
        key_set=key_set,
        fastopen_connect=supports(TCP_FASTOPEN_CONNECT),
        no_cookie=supports(TCP_FASTOPEN_NO_COOKIE),
        listener_key=supports(TCP_FASTOPEN_KEY),
        counters=sysctl.read_counters(),
    )


def problems(state: HostState, sides: TfoMode = NEEDED) -> list[str]:
    """What stops TFO here, in words (empty: ready).

    Args:
        state: from :func:`read_state`.
        sides: what to check: ``TfoMode.CLIENT`` (querying), ``TfoMode.SERVER``
            (serving), or both.
    """
    out = []
    if state.mode is None:
        out.append("this kernel has no net.ipv4.tcp_fastopen: TCP Fast Open needs Linux 3.7+")
        return out
    client = bool(sides & TfoMode.CLIENT)
    if client and not state.client_ready:
        out.append("the client bit (0x1) is off: queries cannot ride in the SYN")
    if sides & TfoMode.SERVER and not state.server_ready:
        out.append("the server bit (0x2) is off: dnstfo serve cannot accept SYN data")
    if client and state.counters.blackhole and state.blackhole_timeout_s:
        out.append(
            f"the kernel suspected a TFO blackhole {state.counters.blackhole} time(s): active "
            f"TFO pauses for up to {state.blackhole_timeout_s} s after each"
        )
    return out


def plan_fix(state: HostState, sides: TfoMode = NEEDED) -> FixPlan:
    """The fix: add the bits of ``sides`` (client 0x1, server 0x2), keep every other bit.

    Raises:
        KernelFeatureError: the kernel has no TFO sysctl at all.
    """
    if state.mode is None:
        raise KernelFeatureError("this kernel has no net.ipv4.tcp_fastopen", "use Linux 4.11+")
    wanted = int(state.mode | (sides & NEEDED))
    return FixPlan(int(state.mode), wanted, f"{sysctl.FASTOPEN} = {wanted}")


def apply_fix(plan: FixPlan) -> None:
    """Writes the planned value to this namespace's sysctl.

    Raises:
        PermissionNeeded: not root.
    """
    if not plan.needed:
        return
    try:
        sysctl.write_sysctl(sysctl.FASTOPEN, plan.wanted)
    except PermissionNeeded as exc:
        raise PermissionNeeded(f"doctor --fix needs root: {exc}") from exc

"""The one exception tree of dnstfo.

::

    DnstfoError                      anything dnstfo raises on purpose
    ├── UsageError                   the caller asked for something impossible (local misuse)
    ├── KernelFeatureError           the kernel lacks a feature or setting; says how to fix it
    │   └── FastOpenDisabled         the kernel has Fast Open, but its sysctl switches it off
    ├── PermissionNeeded             the operation needs root / CAP_NET_ADMIN
    ├── NetworkError                 an OSError at a socket edge, errno kept
    │   ├── PhaseTimeout             nothing happened before a deadline, in a named phase
    │   └── PeerClosed               the peer closed before any reply (also a RemoteProtocolError)
    ├── RemoteProtocolError          the peer sent something that breaks the protocol
    │   └── FrameTooLarge            a DNS-over-TCP frame beyond our size limit
    ├── ZoneLoadError                a zone file failed to load (file and line)
    └── LabError                     the network lab could not be set up or torn down

Code below ``cli/`` raises these; ``cli/`` turns them into one line and an exit code.
"""

from __future__ import annotations

import errno as _errno


class DnstfoError(Exception):
    """Base of every error dnstfo raises on purpose."""


class UsageError(DnstfoError):
    """Local misuse: bad arguments or a request that cannot be honoured."""


class KernelFeatureError(DnstfoError):
    """The running kernel lacks a feature or has it switched off.

    Args:
        what: the missing feature, in words.
        fix: what the user can do about it (a sysctl line, a kernel version).
    """

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.what, self.fix)


class FastOpenDisabled(KernelFeatureError):
    """The kernel has the Fast Open feature, but ``net.ipv4.tcp_fastopen`` switches it off."""


class PermissionNeeded(DnstfoError):
    """The operation needs root (CAP_NET_ADMIN); the message says which."""


class NetworkError(DnstfoError):
    """An ``OSError`` at a socket edge, with its errno kept.

    Args:
        message: what we were doing.
        errno: the ``errno`` of the underlying ``OSError``, if any.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        self._message = message
        if errno is not None:
            name = _errno.errorcode.get(errno, str(errno))
            message = f"{message} ({name})"
        super().__init__(message)
        self.errno = errno

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self._message, self.errno)

    @classmethod
    def from_oserror(cls, doing: str, exc: OSError) -> NetworkError:
        """Translates an ``OSError`` into a ``NetworkError`` that says what we were doing."""
        err = cls(f"{doing}: {exc.strerror or exc}", exc.errno)
        err.__cause__ = exc
        return err


class PhaseTimeout(NetworkError):
    """No progress before a deadline.

    Args:
        phase: the phase that ran out of time (``connect``, ``first byte``, ``response``).
        seconds: the time allowed.
    """

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s waiting for {phase}")
        self.phase = phase
        self.seconds = seconds

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return type(self), (self.phase, self.seconds)


class RemoteProtocolError(DnstfoError):
    """The peer broke the protocol (bad framing, a mismatched or malformed message)."""


class PeerClosed(NetworkError, RemoteProtocolError):
    """The peer closed the connection before sending any byte of a reply.

    No reply arrived, so to ``dnstfo query`` it is a network outcome (exit 9, as dig's
    "end of file"); it stays a :class:`RemoteProtocolError` for code that counts it with
    the server's other refusals to answer (the probe's ``bad-reply``).

    Args:
        phase: what we were waiting for (``first byte``).
    """

    def __init__(self, phase: str) -> None:
        super().__init__(
            f"the server closed the connection without answering (waiting for the {phase})"
        )
        self.phase = phase

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.phase,)


class FrameTooLarge(RemoteProtocolError):
    """A DNS-over-TCP frame announced a length beyond the configured limit."""


class ZoneLoadError(DnstfoError):
    """A zone file failed to load.

    Args:
        path: the file.
        line: the line number of the error, if known.
        reason: what is wrong.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, int | None, str]]:
        return type(self), (self.path, self.line, self.reason)


class LabError(DnstfoError):
    """The network lab could not be set up, driven or torn down."""

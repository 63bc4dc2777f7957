"""Network namespaces for the lab, as context managers.

Each namespace gets a unique name with the ``dtfo`` prefix (``dtfo-c-1a2b3c``), its loopback
up and its own TFO sysctls, and is removed when the ``with`` block ends, also on an exception,
Ctrl-C or SIGTERM (see :func:`signals_as_exceptions`).

Three ways to act inside a namespace, from cheapest to most isolated:

- :meth:`Namespace.in_thread`: a short-lived thread switches itself into the namespace
  (``setns`` acts on the calling thread only) and calls a function there. Use it to *make*
  sockets: a socket keeps the namespace it was created in, so the caller can then use it
  from anywhere. Not for ``/proc/self/net``, which follows the main thread (read
  ``/proc/thread-self/net`` instead).
- :meth:`Namespace.run`: a forked child enters the namespace, calls a picklable function
  and sends back its return value or exception. Everything in the child (``/proc/self/net``,
  netlink sockets, timing) belongs to the namespace and is undisturbed by the caller's GIL.
- :meth:`Namespace.spawn`: a forked child that keeps running (a server) until stopped.

``pyroute2`` creates and removes the namespaces and brings the loopback up; ``setns`` is
called through ctypes because Python 3.11 has no ``os.setns``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import re
import secrets
import select
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dnstfo.errors import LabError, PermissionNeeded, UsageError
from dnstfo.kernel.sysctl import read_sysctl, write_sysctl

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "dtfo"
"""Every lab namespace name starts with this, so leftovers are easy to find."""

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

DEFAULT_SYSCTLS: dict[str, str] = {
    # No global "TFO blackhole" back-off: a lab fault must not switch TFO off for the next test.
    "net.ipv4.tcp_fastopen_blackhole_timeout_sec": "0",
}

_libc = ctypes.CDLL(None, use_errno=True)

# Names this process created and has not removed yet: lets a test suite check its own
# leftovers while other processes run labs of their own on the same machine.
_created_here: set[str] = set()


def setns(path: str | os.PathLike[str]) -> None:
    """Moves the calling thread into the network namespace at ``path``.

    Args:
        path: a namespace file (``/run/netns/NAME`` or ``/proc/PID/ns/net``).

    Raises:
        LabError: the kernel refused (needs CAP_SYS_ADMIN).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


_FIFO_PRIORITY = 10
"""The SCHED_FIFO priority of the lab's timed servers and clients."""

WIRE_PRIORITY = 20
"""The delay line's SCHED_FIFO priority: above the timed processes. A real-time process
is not preempted by one of equal priority, so a server's or client's burst of work (a
start-up's imports, a TLS handshake) on the relay's CPU would otherwise hold packets that
are due, and add tens of milliseconds to a link that belongs to neither."""


def realtime_priority(priority: int = _FIFO_PRIORITY, *, pid: int = 0) -> bool:
    """Gives a process (0: the calling one) a real-time (SCHED_FIFO) priority, when allowed.

    The lab's timing-critical processes (the delay line, the servers and clients whose round
    trips are measured) block between packets, so this cannot starve the machine; it keeps
    other busy processes on a small machine from adding milliseconds to the measurement.

    Returns:
        True when the priority was raised.
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        log.debug("keeping normal priority: %s", exc)
        return False
    return True


def _fifo_before_exec() -> None:
    """``preexec_fn`` of a real-time command: a bare system call (no locks after fork)."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_FIFO_PRIORITY))


def lab_namespaces(*, mine: bool = False) -> list[str]:
    """Returns the names of existing namespaces made by the lab (``dtfo`` prefix).

    Args:
        mine: only those created by this process (and not yet removed).
    """
    from pyroute2 import netns

    names = (n for n in netns.listnetns() if n.startswith(PREFIX))
    return sorted(n for n in names if not mine or n in _created_here)


def check_privileges() -> None:
    """Raises when this process cannot build a lab.

    Raises:
        PermissionNeeded: not root, or no ``/dev/net/tun``.
    """
    if os.geteuid() != 0:
        raise PermissionNeeded("the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run it as root")
    if not os.path.exists("/dev/net/tun"):
        raise PermissionNeeded("the lab needs /dev/net/tun: load the tun module (modprobe tun)")


class Namespace:
    """A named network namespace made by the lab; use :func:`namespace` to get one.

    Attributes:
        name: the namespace name under ``/run/netns``.
        path: the namespace file, for ``setns``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Calls ``fn`` in a fresh thread that has entered this namespace.

        The thread ends afterwards, so the caller's own namespace is untouched. Sockets made
        by ``fn`` stay in this namespace wherever they are used later.

        Returns:
            What ``fn`` returned (any object: nothing is pickled).

        Raises:
            Whatever ``fn`` raised.
        """
        values: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                setns(self.path)
                values.append(fn(*args, **kwargs))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return values[0]

    def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float = 30.0,
        realtime: bool = False,
        **kwargs: Any,
    ) -> T:
        """Calls a picklable ``fn`` in a forked child inside this namespace.

        Args:
            fn: a module-level function; its return value must be picklable.
            *args: its positional arguments.
            timeout: seconds to wait before the child is killed.
            realtime: run the child with :func:`realtime_priority` (for timing).
            **kwargs: its keyword arguments.

        Returns:
            What ``fn`` returned in the child.

        Raises:
            Whatever ``fn`` raised (with the child's traceback as a note).
            LabError: the child timed out, died, or its result could not be read.
        """
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            os.close(read_fd)
            _child_run(self.path, write_fd, realtime, fn, args, kwargs)
        os.close(write_fd)
        child = ChildProcess(pid)
        try:
            data = _read_all(read_fd, timeout)
        except TimeoutError:
            raise LabError(f"{_name(fn)} in {self.name} took longer than {timeout:g} s") from None
        finally:
            os.close(read_fd)
            child.stop(grace=1.0)
        if not data:
            raise LabError(f"{_name(fn)} in {self.name} died without a result ({child.status})")
        ok, value = pickle.loads(data)
        if ok:
            result: T = value  # fn's return value, unpickled (pickle.loads is untyped)
            return result
        raise value

    def spawn(
        self, fn: Callable[..., object], *args: Any, realtime: bool = False, **kwargs: Any
    ) -> ChildProcess:
        """Starts ``fn`` in a forked child inside this namespace and returns at once.

        The child inherits open file descriptors, so a listening socket made with
        :meth:`in_thread` can be served there (the caller should then close its copy).

        Args:
            fn: what the child runs.
            *args: its positional arguments.
            realtime: run the child with :func:`realtime_priority` (for timing).
            **kwargs: its keyword arguments.

        Returns:
            The child; call :meth:`ChildProcess.stop` when done.
        """
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _reset_child_signals()
                if realtime:
                    realtime_priority()
                setns(self.path)
                fn(*args, **kwargs)
            except BaseException:
                log.exception("%s in %s failed", _name(fn), self.name)
                code = 1
            finally:
                os._exit(code)
        return ChildProcess(pid)

    def exec(
        self, argv: Sequence[str], *, realtime: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside this namespace (via ``ip netns exec``) and waits for it.

        Args:
            argv: the command and its arguments.
            realtime: run it with :func:`realtime_priority` from its first instruction
                (a client whose round trips are measured).
            **kwargs: passed to :func:`subprocess.run` (default: capture text output, 30 s).

        Returns:
            The completed process; check ``returncode`` yourself.
        """
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        if realtime:
            # Set in the forked child before exec, so no part of the command runs without it
            # (the policy survives both execs: ``ip``'s and the command's).
            kwargs["preexec_fn"] = _fifo_before_exec
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=False, **kwargs)

    def read_sysctl(self, name: str) -> str:
        """Returns a sysctl's value as seen inside this namespace."""
        return self.in_thread(read_sysctl, name)

    def write_sysctls(self, values: dict[str, str]) -> None:
        """Sets sysctls inside this namespace (``/proc/sys`` follows the writing thread)."""
        self.in_thread(_write_sysctls, values)


class ChildProcess:
    """A forked child we are responsible for reaping.

    Args:
        pid: its process id.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def stop(self, grace: float = 2.0) -> None:
        """Ends the child: SIGTERM, then SIGKILL after ``grace`` seconds; always reaps it."""
        if self.status is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self._reap(grace) is None:
            log.warning("child %d ignored SIGTERM; killing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(None)

    def _reap(self, timeout: float | None) -> int | None:
        if self.status is not None:
            return self.status
        # The pidfd becomes readable when the child exits: no polling loop.
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        if not readable:
            return None
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        os.close(self._pidfd)
        return status


@contextlib.contextmanager
def namespace(
    role: str, *, sysctls: dict[str, str] | None = None, name: str | None = None
) -> Iterator[Namespace]:
    """Creates a namespace, yields it, and always removes it.

    Args:
        role: a short tag in the name (``c`` for client, ``s`` for server).
        sysctls: values to set inside, on top of :data:`DEFAULT_SYSCTLS`
            (e.g. ``{"net.ipv4.tcp_fastopen": "3"}``).
        name: a fixed name instead of a random one (``fixed_name``); it must not exist yet.

    Yields:
        The namespace, with the loopback up and the sysctls set.

    Raises:
        PermissionNeeded: not root.
        LabError: the namespace could not be made.
    """
    from pyroute2 import IPRoute, netns

    check_privileges()
    name = name or f"{PREFIX}-{role}-{secrets.token_hex(3)}"
    if not name.startswith(PREFIX):
        raise LabError(f"a lab namespace name starts with {PREFIX!r}: {name!r}")
    ns = Namespace(name)
    with deferred_signals():
        if ns.path.exists():
            raise LabError(f"namespace {name} exists already (another lab with that name?)")
        try:
            netns.create(name)
        except PermissionError as exc:
            raise PermissionNeeded(f"creating a namespace needs CAP_SYS_ADMIN: {exc}") from exc
        except OSError as exc:
            raise LabError(f"cannot create namespace {name}: {exc}") from exc
        _created_here.add(name)
        log.debug("created namespace %s", name)
    owner = os.getpid()
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ns.write_sysctls({**DEFAULT_SYSCTLS, **(sysctls or {})})
        yield ns
    finally:
        if os.getpid() == owner:  # never from a forked child that unwinds by mistake
            with deferred_signals():
                remove_namespace(name)


def fixed_name(prefix: str, role: str) -> str:
    """The namespace name for ``role`` in a lab named ``prefix``: ``dtfo-PREFIX-ROLE``.

    Raises:
        UsageError: ``prefix`` is not letters, digits and inner dashes (at most 24).
    """
    if not _NAME.fullmatch(prefix):
        raise UsageError(f"a lab name is 1-24 letters, digits or inner dashes, not {prefix!r}")
    return f"{PREFIX}-{prefix}-{role}"


_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,22}[A-Za-z0-9])?")


def remove_namespace(name: str) -> None:
    """Removes a lab namespace by name; missing ones are fine."""
    from pyroute2 import netns

    if not name.startswith(PREFIX):
        raise LabError(f"refusing to remove {name!r}: not a lab namespace")
    try:
        netns.remove(name)
        log.debug("removed namespace %s", name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LabError(f"cannot remove namespace {name}: {exc}") from exc
    _created_here.discard(name)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Holds SIGINT and SIGTERM until the block ends, then acts on them.

    Wrap the steps that must not be cut in half (create and register a namespace, remove it).
    Outside the main thread, signals cannot be caught and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    owner = os.getpid()

    def hold(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a forked helper inherited this handler
            os._exit(128 + signum)
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in caught:
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turns SIGTERM and SIGINT into ``KeyboardInterrupt`` for the block, so ``with`` blocks unwind.

    Without this, SIGTERM would end the process without running any cleanup. SIGINT
    usually raises ``KeyboardInterrupt`` already, but a shell without job control starts
    background commands (``dnstfo lab up &``) with SIGINT ignored, and Python then leaves
    it ignored: ``kill -INT`` must still tear the lab down. Outside the main thread this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            # A forked helper (ours or pyroute2's) inherited this handler: it must die as a
            # plain process would, not unwind the parent's ``with`` blocks a second time.
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _child_run(
    path: Path, write_fd: int, realtime: bool, fn: Callable[..., object], args: Any, kwargs: Any
) -> None:
    """The forked child of :meth:`Namespace.run`: enter, call, send the outcome, exit."""
    code = 0
    try:
        _reset_child_signals()
        if realtime:
            realtime_priority()
        try:
            setns(path)
            payload = pickle.dumps((True, fn(*args, **kwargs)))
        except BaseException as exc:
            exc.add_note(f"in the namespace child:\n{traceback.format_exc()}")
            try:
                payload = pickle.dumps((False, exc))
            except Exception:
                payload = pickle.dumps((False, LabError(f"{type(exc).__name__}: {exc}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no parent finalizers in the child


def _reset_child_signals() -> None:
    # The parent's handlers (pytest's, ours) must not run in the child; die like a plain process.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _read_all(fd: int, timeout: float) -> bytes:
    """Reads ``fd`` until EOF, waiting at most ``timeout`` seconds in total."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        write_sysctl(name, value)


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", repr(fn))

"""The ``--pidfile``: the server's process ID, for init systems and scripts.

Written once the sockets are bound (so a PID in the file means a server that holds its
port), atomically (a reader never sees half a number), and removed at exit if it still
names this process. A file naming another running process is refused: two servers
would fight over it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dnstfo.errors import UsageError


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_pidfile(path: Path) -> None:
    """Writes this process's ID to ``path`` (mode 0644, replaced atomically).

    Raises:
        UsageError: the file names another running process, or cannot be written.
    """
    with contextlib.suppress(OSError, ValueError):
        other = int(path.read_text().strip())
        if other != os.getpid() and _running(other):
            raise UsageError(f"pidfile {path} names process {other}, which is running")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write pidfile {path}: {exc.strerror or exc}") from exc


def remove_pidfile(path: Path) -> None:
    """Removes ``path`` if it still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()

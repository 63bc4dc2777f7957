"""TCP Fast Open key files: make one, read one safely, and rotate on reload.

A key file holds the kernel's text form (``xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx``, optionally
``,backup``), as in ``net.ipv4.tcp_fastopen_key``. With the same key, cookies issued before
a restart stay valid after it, and every worker on a port accepts the same cookies
(RFC 7413 §4.1.1: the server may rotate the secret; cookies made with the backup key are
still accepted). A key is a secret: a file readable by group or others is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import TfoKey


def generate_key() -> TfoKey:
    """Returns a fresh random 16-byte key without a backup."""
    return TfoKey(secrets.token_bytes(16))


def write_key_file(path: Path, key: TfoKey) -> None:
    """Writes ``key`` to ``path`` with mode 0600, replacing the file atomically.

    Raises:
        UsageError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key.text() + "\n")
        os.chmod(tmp, 0o600)  # in case the umask widened nothing but the file pre-existed
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write key file {path}: {exc.strerror or exc}") from exc


def read_key_file(path: Path) -> TfoKey:
    """Reads a key file, refusing one that group or others can read.

    Raises:
        UsageError: missing, unreadable, too open, or not a key.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        text = f.read()
    try:
        return TfoKey.parse(text)
    except UsageError as exc:
        raise UsageError(f"key file {path}: {exc}") from exc


def rotated(current: TfoKey, new: TfoKey) -> TfoKey:
    """The key to install when the file changed from ``current`` to ``new``.

    A file that names its own backup is taken as is. Otherwise a new primary keeps the
    current primary as backup, so cookies issued before the change are still accepted.
    """
    if new.backup is not None or new.primary == current.primary:
        return new if new.backup is not None else TfoKey(new.primary, current.backup)
    return new.with_backup(current)

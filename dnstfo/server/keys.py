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


MAX_KEY_FILE = 4096
"""Bytes read from a key file at most (a key with its backup takes 71)."""


def read_key_file(path: Path) -> TfoKey:
    """Reads a key file, refusing one that group or others can read.

    Only a regular file is read: a FIFO or a device would block start-up or a reload
    (the file is opened non-blocking, so even opening a FIFO does not wait for a writer).

    Raises:
        UsageError: missing, unreadable, not a regular file, too open, or not a key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"key file {path} is not a regular file ({_file_kind(mode)})")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        try:
            data = os.read(fd, MAX_KEY_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    want = "one line xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx (dnstfo keygen makes one)"
    if len(data) > MAX_KEY_FILE:
        raise UsageError(
            f"key file {path} is not a TFO key: over {MAX_KEY_FILE} bytes; want {want}"
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"key file {path} is not a TFO key: binary data; want {want}") from None
    try:
        return TfoKey.parse(text)
    except UsageError as exc:
        raise UsageError(f"key file {path}: {exc}") from exc


def _file_kind(mode: int) -> str:
    """A file type in words."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def rotated(current: TfoKey, new: TfoKey) -> TfoKey:
    """The key to install when the file changed from ``current`` to ``new``.

    A file that names its own backup is taken as is. Otherwise a new primary keeps the
    current primary as backup, so cookies issued before the change are still accepted.
    """
    if new.backup is not None or new.primary == current.primary:
        return new if new.backup is not None else TfoKey(new.primary, current.backup)
    return new.with_backup(current)

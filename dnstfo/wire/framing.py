"""DNS-over-TCP framing (RFC 1035 §4.2.2, RFC 7766 §8).

Theory of operation: every DNS message on a TCP stream is preceded by a two-byte,
network-order length. ``frame`` builds length + message as *one* buffer, so that a
query goes out in one write and therefore fits in the SYN when TCP Fast Open is used
(RFC 7766 §8 asks for one write; RFC 7413 needs it). ``FrameDecoder`` is fed arbitrary
chunks and hands back whole messages; it gives the same messages whether fed one byte
at a time or all at once. It enforces a hard size limit before buffering the body, and
end of stream is explicit: ``feed_eof`` raises if a frame was cut short, so the caller
can report a truncated stream rather than silently lose a message. A bad frame that
follows whole messages in the same chunk does not cost those messages: they are returned,
and the error is kept in ``error`` and raised by the next call.
"""

from __future__ import annotations

from dnstfo.errors import FrameTooLarge, RemoteProtocolError

MAX_MESSAGE = 65535
"""The largest message a two-byte length can announce."""


def frame(message: bytes) -> bytes:
    """Returns ``message`` with its two-byte length prefix, as one buffer.

    Raises:
        ValueError: the message is empty or longer than 65535 bytes.
    """
    n = len(message)
    if not 0 < n <= MAX_MESSAGE:
        raise ValueError(f"a DNS message must be 1..{MAX_MESSAGE} bytes, not {n}")
    return n.to_bytes(2, "big") + message


class FrameDecoder:
    """Splits a DNS-over-TCP byte stream into messages.

    Args:
        max_size: the largest message accepted; a frame announcing more raises
            ``FrameTooLarge`` before any of its body is buffered.
    """

    __slots__ = ("_buf", "_eof", "error", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        if not 0 < max_size <= MAX_MESSAGE:
            raise ValueError(f"max_size must be 1..{MAX_MESSAGE}")
        self.max_size = max_size
        self._buf = bytearray()
        self._eof = False
        self.error: RemoteProtocolError | None = None
        """A bad frame seen after the messages last returned; the stream is unusable."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a whole message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Adds received bytes and returns the messages they completed, in order.

        Returns:
            Zero or more whole messages (without their length prefix). Bytes of an
            unfinished frame stay buffered for the next call. When a bad frame follows
            them, the messages are still returned and ``error`` is set: answer them, then
            close.

        Raises:
            FrameTooLarge: a frame announced more than ``max_size`` bytes.
            RemoteProtocolError: a zero-length frame, data after ``feed_eof``, or any
                call after ``error`` was set.
        """
        if self.error is not None:
            raise self.error
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0 or n > self.max_size:
                return self._fail(out, n)
            if end - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        if pos:
            del buf[:pos]
        return out

    def _fail(self, out: list[bytes], n: int) -> list[bytes]:
        if n == 0:
            error: RemoteProtocolError = RemoteProtocolError("zero-length DNS message frame")
        else:
            error = FrameTooLarge(f"frame of {n} bytes exceeds the limit of {self.max_size}")
        self.error = error
        self._buf.clear()
        if not out:
            raise error
        return out

    def feed_eof(self) -> None:
        """Marks the end of the stream.

        Raises:
            RemoteProtocolError: the stream ended inside a frame (the message says how
                much of it had arrived), or after a bad frame.
        """
        self._eof = True
        if self.error is not None:
            raise self.error
        if self._buf:
            have = len(self._buf)
            if have < 2:
                raise RemoteProtocolError("stream ended inside a length prefix")
            want = (self._buf[0] << 8) | self._buf[1]
            raise RemoteProtocolError(
                f"stream ended inside a frame: {have - 2} of {want} bytes received"
            )

"""DNS over TLS (RFC 7858) on the client, as a sans-I/O layer over memory BIOs.

Theory of operation: ``ssl.SSLObject`` runs the handshake and the records through two
``ssl.MemoryBIO`` buffers and never touches the socket, so the drivers keep their own
socket handling for TCP and TLS alike. The first bytes the layer produces, the
ClientHello, are what the driver writes first: with TFO (``sendto(MSG_FASTOPEN)`` or
``TCP_FASTOPEN_CONNECT``) they ride in the SYN, exactly as the DNS query does over plain
TCP. After that the driver feeds the ciphertext it reads (``receive``) and writes what
``data_to_send`` returns; once ``established`` it hands the framed query to ``send``.

Round trips with TLS 1.3 (RFC 8446 §2): TCP handshake 1, TLS handshake 1 (the client's
Finished goes with the query), query 1: 3 in all; with the ClientHello in the SYN the
first two overlap: 2. ``ssl`` going through an ordinary socket cannot do this: with
``TCP_FASTOPEN_CONNECT`` and a cached cookie its ``recv`` fails with EAGAIN before the
connection exists.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from dnstfo.client.config import TlsOptions
from dnstfo.errors import NetworkError, RemoteProtocolError, UsageError

ALPN = "dot"
"""The ALPN protocol ID of DNS over TLS (RFC 8310 §8.1 registers ``dot``)."""

HANDSHAKE = "TLS handshake"
"""The phase name while the handshake runs (timeouts name it)."""


class TlsError(RemoteProtocolError):
    """The TLS layer failed: the certificate was refused, or the peer does not speak TLS."""


class TlsCertificateRefused(TlsError):
    """The server answered the handshake, but its certificate failed our check."""

    def __init__(self, verify_message: str) -> None:
        super().__init__(
            f"TLS: the server's certificate was refused: {verify_message} "
            "(+tls-ca=FILE names the CA, +tls-hostname=NAME the name, "
            "+tls-insecure skips the check)"
        )
        self.verify_message = verify_message
        """OpenSSL's reason (``unable to get local issuer certificate``)."""


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What the TLS handshake settled."""

    version: str
    """Protocol version (``TLSv1.3``, ``TLSv1.2``)."""
    cipher: str
    """Cipher suite name (OpenSSL's)."""
    alpn: str | None
    """The ALPN protocol the server chose, or None."""
    resumed: bool
    """Whether a previous session was resumed."""
    verified: bool
    """Whether the certificate chain and the name were checked (False: ``+tls-insecure``)."""
    hostname: str | None
    """The name the certificate was checked against (None: not checked)."""


def client_context(options: TlsOptions) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, ALPN ``dot``, verification as ``options`` says.

    Raises:
        UsageError: the CA file cannot be read or holds no certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    if options.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        if options.ca_file is None:
            ctx.load_default_certs()
        else:
            ctx.load_verify_locations(cafile=options.ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise UsageError(f"cannot load the CA file {options.ca_file}: {reason}") from exc
    return ctx


class TlsClient:
    """One TLS client connection over memory buffers (no socket).

    Args:
        options: verification options.
        hostname: the name to verify the certificate against (and send as SNI); an IP
            literal is checked against the certificate's IP addresses.
        context: a prepared context (``client_context``); made from ``options`` if None.
    """

    __slots__ = ("_in", "_obj", "_out", "established", "hostname", "options")

    def __init__(
        self,
        options: TlsOptions,
        hostname: str,
        context: ssl.SSLContext | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        ctx = context or client_context(options)
        self.options = options
        self.hostname = None if options.insecure else (options.hostname or hostname)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(
            self._in, self._out, server_hostname=self.hostname, session=session
        )
        self.established = False

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to resume next time (with its ticket once one arrived), or None."""
        return self._obj.session if self.established else None

    def start(self) -> bytes:
        """Begins the handshake; returns the ClientHello (the first write, into the SYN)."""
        self._handshake()
        return self._out.read()

    def receive(self, data: bytes) -> bytes:
        """Feeds ciphertext read from the socket (``b""``: end of stream).

        Returns:
            The application bytes it completed (often none); then write ``data_to_send``.

        Raises:
            TlsError: the handshake failed (certificate refused, not TLS, closed early).
            RemoteProtocolError: the stream ended after the handshake (caller: ``b""``
                means the end then).
        """
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        if not self.established:
            self._handshake()
            if not self.established:
                return b""
        return self._read_all(eof=not data)

    def send(self, plaintext: bytes) -> None:
        """Encrypts application bytes; then write ``data_to_send``."""
        self._obj.write(plaintext)

    def data_to_send(self) -> bytes:
        """Ciphertext waiting to be written to the socket."""
        return self._out.read()

    def info(self) -> TlsInfo:
        """What the handshake settled (call once ``established``)."""
        cipher = self._obj.cipher()
        return TlsInfo(
            version=self._obj.version() or "?",
            cipher=cipher[0] if cipher else "?",
            alpn=self._obj.selected_alpn_protocol(),
            resumed=self._obj.session_reused,
            verified=not self.options.insecure,
            hostname=self.hostname,
        )

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            raise TlsCertificateRefused(exc.verify_message) from exc
        except ssl.SSLEOFError as exc:
            raise TlsError(
                "TLS: the server closed the connection during the handshake "
                "(not a TLS server, or it refused us)"
            ) from exc
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {_reason(exc)}") from exc
        self.established = True

    def _read_all(self, *, eof: bool) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""
            except ssl.SSLError as exc:
                raise TlsError(f"TLS: {_reason(exc)}") from exc
            if not chunk:
                if not chunks:
                    raise RemoteProtocolError("the server closed the TLS connection")
                break
            chunks.append(chunk)
        if eof and not chunks:
            raise RemoteProtocolError("the server closed the TLS connection")
        return b"".join(chunks)


def _reason(exc: ssl.SSLError) -> str:
    """One line for an OpenSSL error, with a hint for the common ones."""
    reason = exc.reason or str(exc)
    if reason in ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return f"{reason}: the server does not speak TLS on this port (plain DNS over TCP?)"
    if reason == "TLSV1_ALERT_NO_APPLICATION_PROTOCOL":
        return f"{reason}: the server does not offer ALPN {ALPN!r}"
    return str(reason)


class TlsSessions:
    """Contexts and sessions kept across the queries of one run (``+repeat``, ``+compare``),
    so that a later connection to the same server resumes (RFC 8446 §2.2): no certificate
    to send or check. Resumption in TLS 1.3 still takes the handshake's round trip."""

    __slots__ = ("_contexts", "_sessions")

    def __init__(self) -> None:
        self._contexts: dict[TlsOptions, ssl.SSLContext] = {}
        self._sessions: dict[tuple[TlsOptions, str, int], ssl.SSLSession] = {}

    def client(self, options: TlsOptions, server: str, port: int) -> TlsClient:
        """A TLS layer for ``server``, resuming the last session kept for it.

        Raises:
            UsageError: the CA file cannot be loaded.
        """
        context = self._contexts.get(options)
        if context is None:
            context = self._contexts[options] = client_context(options)
        session = self._sessions.get((options, server, port))
        return TlsClient(options, server, context, session)

    def keep(self, client: TlsClient, server: str, port: int) -> None:
        """Keeps ``client``'s session for the next connection to ``server``."""
        session = client.session
        if session is not None and session.has_ticket:
            self._sessions[(client.options, server, port)] = session


class TlsPump:
    """A ``TlsClient`` and the ciphertext waiting for a non-blocking socket: what a
    driver that never blocks (``client.multiplex``) needs to run DoT like plain TCP.

    Args:
        client: the TLS layer (``start`` already called).
        unsent: the part of the ClientHello the SYN did not carry.
        query: the framed query, encrypted once the handshake is done.
    """

    __slots__ = ("client", "pending", "query")

    def __init__(self, client: TlsClient, unsent: bytes, query: bytes) -> None:
        self.client = client
        self.pending = unsent
        """Ciphertext still to write."""
        self.query: bytes | None = query
        """The framed query, until it is handed to the TLS layer."""

    def flush(self, sock: socket.socket) -> bool:
        """Writes what it can of ``pending``; True when nothing is left.

        Raises:
            NetworkError: the socket failed (errno kept).
        """
        while self.pending:
            try:
                n = sock.send(self.pending)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise NetworkError.from_oserror("sending the TLS handshake", exc) from exc
            self.pending = self.pending[n:]
        return True

    def read(self, sock: socket.socket) -> bytes | None:
        """Reads once: runs the handshake and, when it completes, encrypts the query.

        Returns:
            The plaintext it completed (maybe ``b""``), or None when the socket has
            nothing; then ``flush`` and wait (for writing too while ``pending``).

        Raises:
            TlsError: the handshake failed.
            RemoteProtocolError: the server closed the connection.
            NetworkError: the socket failed.
        """
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise NetworkError.from_oserror("reading the response", exc) from exc
        client = self.client
        plain = client.receive(chunk)
        if client.established and self.query is not None:
            client.send(self.query)
            self.query = None
        self.pending += client.data_to_send()
        return plain

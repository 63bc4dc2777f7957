"""A throw-away certificate authority for the lab and the tests, made with the openssl CLI.

Nothing private is shipped: each call makes a fresh CA key, signs one server certificate
(ECDSA P-256, names and addresses in subjectAltName) and writes the PEM files into a
directory the caller owns (the key mode 0600, as ``dnstfo serve`` demands).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dnstfo.errors import LabError


@dataclass(frozen=True, slots=True)
class TestCa:
    """The files of a test CA and of the one server certificate it signed."""

    __test__ = False  # not a pytest test class

    ca_cert: Path
    """The CA's certificate (PEM): what a client trusts (``+tls-ca=``)."""
    cert: Path
    """The server's certificate (PEM)."""
    key: Path
    """The server's private key (PEM, mode 0600)."""


def make_test_ca(
    directory: Path,
    names: tuple[str, ...] = ("dns.test",),
    addresses: tuple[str, ...] = ("127.0.0.1",),
    *,
    days: int = 2,
    expired: bool = False,
) -> TestCa:
    """Makes a CA and a server certificate for ``names`` and ``addresses`` in ``directory``.

    Args:
        directory: where the files go (it exists; the caller removes it).
        names: DNS names for subjectAltName (the first is also the subject's CN).
        addresses: IP addresses for subjectAltName.
        days: validity of the server certificate.
        expired: make a server certificate whose validity ended yesterday.

    Raises:
        LabError: openssl is missing or failed (its message kept).
    """
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    san = [f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses]
    ext.write_text(
        f"subjectAltName={','.join(san)}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert,
        "-days", "3", "-subj", "/CN=dnstfo test CA",
    )  # fmt: skip
    _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}")
    # ``openssl ca`` signs (unlike ``x509 -req`` of OpenSSL 3.0) with any validity dates.
    conf = directory / "ca.cnf"
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    conf.write_text(
        f"[ca]\ndefault_ca=test\n[test]\ndatabase={directory}/index.txt\n"
        f"new_certs_dir={directory}\nserial={directory}/serial\ndefault_md=sha256\n"
        "policy=any\n[any]\ncommonName=supplied\n"
    )
    start, end = (_ago(2), _ago(1)) if expired else (_ago(1), _ago(-days))
    _openssl(
        "ca", "-batch", "-notext", "-config", conf, "-cert", ca_cert, "-keyfile", ca_key,
        "-startdate", start, "-enddate", end, "-in", csr, "-extfile", ext, "-out", cert,
    )  # fmt: skip
    os.chmod(key, 0o600)
    os.chmod(ca_key, 0o600)
    return TestCa(ca_cert=ca_cert, cert=cert, key=key)


def _ago(days: int) -> str:
    import datetime

    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
    return when.strftime("%Y%m%d%H%M%SZ")


def _openssl(*args: str | Path) -> None:
    try:
        subprocess.run(
            ["openssl", *map(str, args)], check=True, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError as exc:
        raise LabError("openssl is not installed (apt-get install openssl)") from exc
    except subprocess.CalledProcessError as exc:
        raise LabError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc

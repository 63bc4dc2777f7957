"""dig's argument shape: ``NAME [TYPE] [CLASS] @SERVER [-p PORT] [+option[=value]] ...``.

A pure parser (no click, no I/O) of every argument of ``dnstfo query``, so that every form
is tested without a network and the command can run without importing click (start-up
time: people run it by hand and in loops). Each ``+option`` has a ``--option`` twin
(``+timeout=2`` is ``--timeout 2`` or ``--timeout=2``); the last one given wins, as in dig.

dig's habits kept: a word that names a type is the type (``ANY`` too, though it is also a
class) until one is given, and a class after that; ``-t``, ``-c``, ``-q`` and ``-x`` say
it explicitly; the first ``@SERVER`` counts (dig and kdig ignore later ones); ``+tcp`` and
``+vc`` are accepted, since every query here is over TCP; dig's ``+time=S`` is ``+timeout=S``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dnstfo.errors import UsageError

_CLASSES = frozenset({"IN", "CH", "CHAOS", "HS", "HESIOD", "ANY", "NONE"})
_MAX_PORT = 65535

# +option -> field of DigArgs, for the boolean ones; "no" prefixes turn them off.
_FLAGS = {
    "short": "short",
    "json": "json",
    "dnssec": "dnssec",
    "recurse": "recurse",
    "tfo": "tfo",
    "cookie": "cookie",
    "compare": "compare",
    "tls": "tls",
    "tls-insecure": "tls_insecure",
}
_VALUES = {"timeout": float, "tries": int, "repeat": int, "port": int}
# Dash options that take a value: the short ones, and the long ones that are not numbers.
_DASH_VALUES = {
    "-p": "port",
    "-b": "source",
    "--source": "source",
    "--method": "method",
    "-t": "rdtype",
    "-c": "rdclass",
    "-q": "name",
    "-x": "reverse",
    "-f": "batch",
}
# dig's transport options: TCP is what every query here uses already.
_TCP_OPTIONS = frozenset({"tcp", "vc"})
_METHODS = frozenset({"sendto", "connect"})


@dataclass(frozen=True, slots=True)
class DigArgs:
    """What the dig-style words of a command line asked for (None: not given)."""

    name: str | None = None
    """The name to look up."""
    rdtype: str | None = None
    """Query type mnemonic, upper case."""
    rdclass: str | None = None
    """Query class mnemonic, upper case."""
    server: str | None = None
    """The ``@SERVER`` word, without the ``@``."""
    short: bool | None = None
    """``+short``: only the answer's data."""
    json: bool | None = None
    """``+json``: one JSON object per query."""
    dnssec: bool | None = None
    """``+dnssec``: set the DO bit."""
    recurse: bool | None = None
    """``+[no]recurse``: Recursion Desired."""
    tfo: bool | None = None
    """``+[no]tfo``: try TCP Fast Open."""
    cookie: bool | None = None
    """``+nocookie`` (False): send SYN data without a cookie (TCP_FASTOPEN_NO_COOKIE)."""
    compare: bool | None = None
    """``+compare``: baseline, priming and TFO queries side by side."""
    timeout: float | None = None
    """``+timeout=S``: seconds per try."""
    tries: int | None = None
    """``+tries=N``: tries in all."""
    repeat: int | None = None
    """``+repeat=N``: queries in a row (TFO queries with ``+compare``)."""
    port: int | None = None
    """``-p N`` or ``+port=N``: the server's port."""
    source: str | None = None
    """``-b ADDR``: source address to bind."""
    family: int | None = None
    """``-4`` or ``-6``: 4 or 6 to use only that address family."""
    method: str | None = None
    """``--method sendto|connect``: MSG_FASTOPEN, or TCP_FASTOPEN_CONNECT."""
    reverse: str | None = None
    """``-x ADDR``: the address whose reverse name (PTR) is looked up."""
    batch: str | None = None
    """``-f FILE``: one query per line (``-`` reads standard input)."""
    tls: bool | None = None
    """``+tls``: DNS over TLS (RFC 7858); ``-p`` defaults to 853."""
    tls_ca: str | None = None
    """``+tls-ca[=FILE]``: trust the CAs in FILE (``""``: the system's store)."""
    tls_hostname: str | None = None
    """``+tls-hostname=NAME``: the name the certificate must hold."""
    tls_insecure: bool | None = None
    """``+tls-insecure``: do not verify the certificate."""


def _is_type(word: str) -> bool:
    import dns.rdatatype

    try:
        dns.rdatatype.from_text(word)
    except Exception:
        return False
    return True


def _is_class(word: str) -> bool:
    import dns.rdataclass

    try:
        dns.rdataclass.from_text(word)
    except Exception:
        return False
    return True


def _reverse_name(address: str) -> str:
    import dns.exception
    import dns.reversename

    try:
        return str(dns.reversename.from_address(address))
    except (dns.exception.SyntaxError, ValueError):
        raise UsageError(f"-x needs an IPv4 or IPv6 address, not {address!r}") from None


def _ip_literal(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"-b needs an IPv4 or IPv6 address, not {text!r}") from None


def parse(words: list[str] | tuple[str, ...]) -> DigArgs:
    """Parses the arguments of ``dnstfo query``.

    Args:
        words: e.g. ``["example.com", "MX", "@127.0.0.1", "-p", "5353", "+short"]``.

    Returns:
        The values given; the caller applies defaults.

    Raises:
        UsageError: an unknown option, a bad value, or too many positional words.
    """
    # DigArgs field -> value, of that field's type (keys come from tables: a TypedDict cannot
    # check them, so the values are Any).
    values: dict[str, Any] = {}
    positional: list[str] = []
    rest = iter(words)
    for word in rest:
        if word.startswith("@"):
            if not word[1:]:
                raise UsageError("@ needs a server name or address")
            values.setdefault("server", word[1:])  # the first, as dig and kdig
        elif word.startswith("+"):
            _plus(word[1:], values)
        elif word in ("-4", "-6"):
            if values.get("family", int(word[1])) != int(word[1]):
                raise UsageError("-4 and -6 exclude each other")
            values["family"] = int(word[1])
        elif word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            _dash(word, rest, values)
        else:
            positional.append(word)
    # dig's rule: a word that reads as a type is one until a type is given (so ANY, both
    # a type and a class, is the type first), then a class word is the class; anything
    # else is the name. -t, -c, -q and -x were set above and are not overridden.
    for word in positional:
        upper = word.upper()
        if "rdtype" not in values and _is_type(upper):
            values["rdtype"] = upper
        elif "rdclass" not in values and upper in _CLASSES:
            values["rdclass"] = upper
        elif "name" not in values:
            values["name"] = word
        elif "." not in word and "rdtype" not in values:
            raise UsageError(f"unknown type {word!r}")
        else:
            raise UsageError(f"unexpected argument {word!r}")
    if "reverse" in values:
        values.setdefault("rdtype", "PTR")
    return DigArgs(**values)


def _dash(word: str, rest: Iterator[str], values: dict[str, Any]) -> None:
    """``-p 53``, ``-p53``, ``-b ADDR``, ``--method connect``, ``--timeout=2``, ``--short``."""
    name, sep, raw = word.partition("=")
    has_value = bool(sep)
    if not word.startswith("--") and len(word) > 2:  # -p5353
        name, has_value, raw = word[:2], True, word[2:]
    if name == "--tls-ca" or (name == "--tls-hostname" and has_value):
        _plus(f"{name[2:]}={raw}" if has_value else name[2:], values)  # --tls-ca: system store
        return
    takes_value = name in _DASH_VALUES or name[2:] in _VALUES or name == "--tls-hostname"
    if not takes_value:
        if has_value or not name.startswith("--"):
            raise UsageError(f"unknown option {word}")
        _plus(name[2:], values)
        return
    if not has_value:
        raw = next(rest, "")
        if not raw:
            raise UsageError(f"{name} needs a value")
    if name == "--tls-hostname":
        _plus(f"tls-hostname={raw}", values)
    elif name in _DASH_VALUES:
        _dash_value(name, _DASH_VALUES[name], raw, values)
    else:
        _plus(f"{name[2:]}={raw}", values)


def _dash_value(name: str, key: str, raw: str, values: dict[str, Any]) -> None:
    """Checks and stores the value of a dash option that takes one."""
    if key == "port":
        _plus(f"port={raw}", values)
        return
    if key == "method" and raw not in _METHODS:
        raise UsageError(f"--method is sendto or connect, not {raw!r}")
    if key == "rdtype":
        raw = raw.upper()
        if not _is_type(raw):
            raise UsageError(f"unknown type {raw!r}")
    elif key == "rdclass":
        raw = raw.upper()
        if not _is_class(raw):
            raise UsageError(f"unknown class {raw!r}")
    elif key == "source":
        raw = _ip_literal(raw)
    elif key == "reverse":
        if "name" in values and "reverse" not in values:
            raise UsageError("-x and -q both name what to look up; give one")
        values["name"] = _reverse_name(raw)
    elif key == "name" and "reverse" in values:
        raise UsageError("-x and -q both name what to look up; give one")
    values[key] = raw


def _plus(option: str, values: dict[str, Any]) -> None:
    key, has_value, raw = option.partition("=")
    key = key.lower()
    if key in ("tls-ca", "tls-hostname"):
        if key == "tls-hostname" and not raw:
            raise UsageError("+tls-hostname needs a name, e.g. +tls-hostname=dns.example")
        values[key.replace("-", "_")] = raw
        values["tls"] = True
        return
    if key == "tls-insecure":
        values["tls"] = True
    name = key
    if key == "time":  # dig's name for the seconds per try
        key = "timeout"
    if key in _VALUES:
        if not has_value:
            raise UsageError(f"+{name} needs a value, e.g. +{name}=3")
        try:
            value = _VALUES[key](raw)
        except ValueError:
            raise UsageError(f"+{name}={raw}: not a number") from None
        if key == "port" and not 0 < value <= _MAX_PORT:
            raise UsageError(f"port {raw} is out of range: give 1 to {_MAX_PORT}")
        if value <= 0:
            raise UsageError(f"+{name} must be positive")
        values[key] = value
        return
    on = not key.startswith("no")
    base = key if on else key[2:]
    if base not in _TCP_OPTIONS and base not in _FLAGS:
        raise UsageError(f"unknown option +{key}")
    if has_value:
        raise UsageError(f"+{key} takes no value")
    if base in _TCP_OPTIONS:
        if not on:
            raise UsageError(f"+{key}: dnstfo query asks over TCP only")
        return
    values[_FLAGS[base]] = on

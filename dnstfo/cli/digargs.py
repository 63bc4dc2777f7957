"""dig's argument shape: ``NAME [TYPE] [CLASS] @SERVER [+option[=value]] ...``.

A pure parser (no click, no I/O) so that every form is tested without a network. The long
``--options`` of ``dnstfo query`` are merged in by the command; ``+options`` win when both
are given because they come last in dig's grammar too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnstfo.errors import UsageError

_CLASSES = frozenset({"IN", "CH", "CHAOS", "HS", "HESIOD", "ANY", "NONE"})

# +option -> field of DigArgs, for the boolean ones; "no" prefixes turn them off.
_FLAGS = {
    "short": "short",
    "json": "json",
    "dnssec": "dnssec",
    "recurse": "recurse",
    "tfo": "tfo",
    "cookie": "cookie",
    "compare": "compare",
}
_VALUES = {"timeout": float, "tries": int, "repeat": int, "port": int}


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
    """``+port=N`` (dig has ``-p``; both work)."""


def _is_type(word: str) -> bool:
    import dns.rdatatype

    try:
        dns.rdatatype.from_text(word)
    except Exception:
        return False
    return True


def parse(words: list[str] | tuple[str, ...]) -> DigArgs:
    """Parses the dig-style words (everything that is not a ``-x``/``--x`` option).

    Args:
        words: e.g. ``["example.com", "MX", "@127.0.0.1", "+short"]``.

    Returns:
        The values given; the caller applies defaults.

    Raises:
        UsageError: an unknown ``+option``, a bad value, or too many positional words.
    """
    values: dict[str, object] = {}
    positional: list[str] = []
    for word in words:
        if word.startswith("@"):
            if not word[1:]:
                raise UsageError("@ needs a server name or address")
            values["server"] = word[1:]
        elif word.startswith("+"):
            _plus(word[1:], values)
        else:
            positional.append(word)
    # dig's rule: a word that reads as a type (or class) is one, until one is given;
    # anything else is the name.
    for word in positional:
        upper = word.upper()
        if "rdtype" not in values and upper not in _CLASSES and _is_type(upper):
            values["rdtype"] = upper
        elif "rdclass" not in values and upper in _CLASSES:
            values["rdclass"] = upper
        elif "name" not in values:
            values["name"] = word
        else:
            raise UsageError(f"unexpected argument {word!r}")
    return DigArgs(**values)  # type: ignore[arg-type]


def _plus(option: str, values: dict[str, object]) -> None:
    key, has_value, raw = option.partition("=")
    key = key.lower()
    if key in _VALUES:
        if not has_value:
            raise UsageError(f"+{key} needs a value, e.g. +{key}=3")
        try:
            value = _VALUES[key](raw)
        except ValueError:
            raise UsageError(f"+{key}={raw}: not a number") from None
        if value <= 0:  # type: ignore[operator]
            raise UsageError(f"+{key} must be positive")
        values[key] = value
        return
    if has_value:
        raise UsageError(f"+{key} takes no value")
    on = not key.startswith("no")
    base = key if on else key[2:]
    if base not in _FLAGS:
        raise UsageError(f"unknown option +{key}")
    values[_FLAGS[base]] = on

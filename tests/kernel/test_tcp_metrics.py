from __future__ import annotations

import os
import re
import subprocess

import pytest

from dnstfo.errors import PermissionNeeded
from dnstfo.kernel import tcp_metrics
from tests.kernel import tfo_loopback

K1 = "00112233-44556677-8899aabb-ccddeeff"


def ip_tcp_metrics() -> dict[str, str | None]:
    """What iproute2 says: destination -> fo_cookie hex (or None)."""
    out = subprocess.run(
        ["ip", "tcp_metrics", "show"], capture_output=True, text=True, check=True
    ).stdout
    shown: dict[str, str | None] = {}
    for line in out.splitlines():
        cookie = re.search(r"fo_cookie (\w+)", line)
        shown[line.split()[0]] = cookie.group(1) if cookie else None
    return shown


def prime_then_compare_delete_flush() -> dict[str, object]:
    tfo_loopback.with_keys([K1])
    ours = {e.daddr: (e.cookie.hex() if e.cookie else None) for e in tcp_metrics.entries()}
    theirs = ip_tcp_metrics()
    entry = tcp_metrics.lookup(tfo_loopback.HOST)[0]
    tcp_metrics.delete(tfo_loopback.HOST)
    after_delete = tcp_metrics.cookie_for(tfo_loopback.HOST)
    shown_after_delete = ip_tcp_metrics()
    tcp_metrics.delete(tfo_loopback.HOST)  # deleting what is gone is fine
    tfo_loopback.with_keys([K1])
    tcp_metrics.flush()
    return {
        "ours": ours,
        "theirs": theirs,
        "entry": entry,
        "after_delete": after_delete,
        "shown_after_delete": shown_after_delete,
        "after_flush": tcp_metrics.entries(),
    }


@pytest.mark.netadmin
def test_cache_agrees_with_iproute2_and_delete_flush_work(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    r = tfo_ns.run(prime_then_compare_delete_flush)
    assert r["ours"] == r["theirs"]
    assert r["ours"]["127.0.0.1"] is not None, "the priming exchange cached a cookie"
    entry = r["entry"]
    assert entry.saddr == "127.0.0.1"
    assert entry.fo_mss
    assert entry.age_ms is not None
    assert r["after_delete"] is None
    assert "127.0.0.1" not in r["shown_after_delete"]
    assert r["after_flush"] == []


def _delete_as_nobody() -> None:
    os.setuid(65534)
    tcp_metrics.delete("127.0.0.1")


@pytest.mark.netadmin
def test_delete_without_privilege_says_what_is_needed(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionNeeded, match="needs root"):
        tfo_ns.run(_delete_as_nobody)


def prime_then_get() -> dict[str, object]:
    tfo_loopback.with_keys([K1])
    dumped = tcp_metrics.lookup(tfo_loopback.HOST)[0]
    with tcp_metrics.Cache() as cache:
        pair = cache.get(tfo_loopback.HOST, tfo_loopback.HOST)
        any_source = cache.get(tfo_loopback.HOST)
        other_source = cache.get(tfo_loopback.HOST, "127.0.0.2")
        absent = cache.get("127.0.0.9")
        cache.delete(tfo_loopback.HOST, tfo_loopback.HOST)
        after_delete = cache.cookie(tfo_loopback.HOST, tfo_loopback.HOST)
    return {
        "dumped": dumped,
        "pair": pair,
        "any_source": any_source,
        "other_source": other_source,
        "absent": absent,
        "after_delete": after_delete,
        "module_get": tcp_metrics.get(tfo_loopback.HOST),
    }


@pytest.mark.netadmin
def test_get_reads_one_address_pair_as_the_dump_shows_it(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    r = tfo_ns.run(prime_then_get)
    dumped = r["dumped"]
    assert dumped.cookie is not None
    assert r["pair"].cookie == dumped.cookie
    assert (r["pair"].daddr, r["pair"].saddr) == ("127.0.0.1", "127.0.0.1")
    assert r["any_source"].cookie == dumped.cookie
    assert r["other_source"] is None
    assert r["absent"] is None
    assert r["after_delete"] is None
    assert r["module_get"] is None

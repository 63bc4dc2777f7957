"""Rendering of results as text (dig's layout plus a ``;; TFO`` block) or JSON.

The only module that writes to stdout. The query's JSON shapes are the library's
(:mod:`dnstfo.client.records`); this module prints them.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dns.message
    import dns.rrset

    from dnstfo.client.compare import Comparison
    from dnstfo.client.host import FixPlan, HostState
    from dnstfo.client.result import QueryResult, TfoReport
    from dnstfo.client.tls import TlsInfo
    from dnstfo.kernel.tcp_metrics import TcpMetricsEntry

SHORT_PATH_NOTE = "the path RTT is under 1 ms: rounds measure host overhead here"
"""Said wherever rounds are shown for a sub-millisecond path (loopback)."""


def out(text: str) -> None:
    """Writes ``text`` and a newline to stdout."""
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """Writes one line to stderr."""
    sys.stderr.write(text + "\n")


# ---------------------------------------------------------------- dig-like text


def _flags_text(message: dns.message.Message) -> str:
    import dns.flags

    order = ("QR", "AA", "TC", "RD", "RA", "AD", "CD")
    names = dns.flags.to_text(message.flags).split()
    return " ".join(f.lower() for f in order if f in names)


def _rr_lines(rrset: dns.rrset.RRset, question: bool = False) -> list[str]:
    import dns.rdataclass
    import dns.rdatatype

    name = rrset.name.to_text()
    cls = dns.rdataclass.to_text(rrset.rdclass)
    typ = dns.rdatatype.to_text(rrset.rdtype)
    if question:
        return [f";{name}\t\t{cls}\t{typ}"]
    pad = "\t" * max(1, (31 - len(name)) // 8)  # dig's: tabs to column 24 (or one)
    return [f"{name}{pad}{rrset.ttl}\t{cls}\t{typ}\t{rd.to_text()}" for rd in rrset]


def _edns_lines(message: dns.message.Message) -> list[str]:
    import dns.flags

    if message.edns < 0:
        return []
    flags = " do" if message.ednsflags & dns.flags.DO else ""
    lines = [";; OPT PSEUDOSECTION:", f"; EDNS: version: {message.edns}, flags:{flags}; "
             f"udp: {message.payload}"]  # fmt: skip
    lines += [f"; {opt.otype!s}: {opt.to_text()}" for opt in message.options]
    return lines


def dig_text(result: QueryResult, server_name: str) -> str:
    """The result in dig's layout, with the ``;; TFO`` block after the footer.

    A zone transfer is printed as dig prints one: every record, then its size.
    """
    import dns.opcode
    import dns.rcode

    r = result.response
    c = result.config
    command = f"; <<>> dnstfo query <<>> {c.qname} {c.rdtype} @{server_name} +tcp" + (
        "" if c.tfo_requested else " +notfo"
    )
    if result.tls is not None:
        command += " +tls"
    if result.transfer is not None:
        return _transfer_text(result, server_name, command)
    lines = [
        "",
        command,
        ";; Got answer:",
        f";; ->>HEADER<<- opcode: {dns.opcode.to_text(r.opcode())}, "
        f"status: {dns.rcode.to_text(r.rcode())}, id: {r.id}",
        f";; flags: {_flags_text(r)}; QUERY: {len(r.question)}, ANSWER: "
        f"{sum(len(s) for s in r.answer)}, AUTHORITY: {sum(len(s) for s in r.authority)}, "
        f"ADDITIONAL: {sum(len(s) for s in r.additional) + (1 if r.edns >= 0 else 0)}",
        "",
    ]
    lines += _edns_lines(r)
    lines.append(";; QUESTION SECTION:")
    for rrset in r.question:
        lines += _rr_lines(rrset, question=True)
    for title, section in (("ANSWER", r.answer), ("AUTHORITY", r.authority),
                           ("ADDITIONAL", r.additional)):  # fmt: skip
        if section:
            lines += ["", f";; {title} SECTION:"]
            for rrset in section:
                lines += _rr_lines(rrset)
    lines += ["", *_footer(result, server_name), f";; MSG SIZE  rcvd: {result.response_size}", ""]
    lines += tfo_block(result.tfo)
    if result.tls is not None:
        lines += tls_lines(result.tls)
    return "\n".join(lines)


def tls_lines(tls: TlsInfo) -> list[str]:
    """The ``;; TLS`` lines: what the handshake settled and whether it was verified."""
    check = (
        f"certificate verified for {tls.hostname}"
        if tls.verified
        else "certificate NOT verified (+tls-insecure)"
    )
    return [
        f";; TLS: {tls.version} {tls.cipher}, ALPN {tls.alpn or 'none'}, "
        f"{'resumed' if tls.resumed else 'full handshake'}; {check}",
        ";;   over TLS the first write, the one that can ride in the SYN, is the ClientHello",
    ]


def _footer(result: QueryResult, server_name: str) -> list[str]:
    """Query time (every try, the whole transfer), server and date.

    One try of one message: its own total, which leaves out the reading of the kernel's
    TFO state before it (``elapsed_ms`` counts that too).
    """
    host, port = result.server
    one = result.tries == 1 and result.transfer is None
    ms = (result.tfo.timings.total_ms or 0.0) if one else result.elapsed_ms
    lines = [
        f";; Query time: {ms:.0f} msec",
        f";; SERVER: {host}#{port}({server_name}) (TCP)",
        f";; WHEN: {time.strftime('%a %b %d %H:%M:%S %Z %Y', time.localtime(result.wall_time))}",
    ]
    if result.tries > 1:
        lines.append(f";; Tries: {result.tries} ({result.tries - 1} timed out)")
    return lines


def _transfer_text(result: QueryResult, server_name: str, command: str) -> str:
    """An AXFR in dig's shape: the records in order, the footer, ``XFR size``."""
    xfr = result.transfer
    assert xfr is not None
    lines = ["", command]
    lines += [line for m in xfr.messages for rrset in m.answer for line in _rr_lines(rrset)]
    lines += [
        *_footer(result, server_name),
        f";; XFR size: {xfr.records} records (messages {len(xfr.messages)}, bytes {xfr.size})",
        "",
    ]
    lines += tfo_block(result.tfo)
    return "\n".join(lines)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _cookie(cookie: bytes | None) -> str:
    return "none" if cookie is None else f"{cookie.hex()} ({len(cookie)} bytes)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms" if value >= 1 else f"{value:.3f} ms"


def tfo_block(tfo: TfoReport) -> list[str]:
    """The ``;; TFO`` block: verdict, state before, what happened, timings."""
    b, a, t = tfo.before, tfo.after, tfo.timings
    mode = (
        "unreadable"
        if b.sysctl is None
        else f"{b.sysctl} (client bit {'on' if b.client_enabled else 'off'})"
    )
    hole = f"timeout {b.blackhole_timeout_s} s, count {b.blackhole_count}"
    method = tfo.method + (" +nocookie" if tfo.no_cookie else "")
    lines = [
        f";; TFO: {tfo.verdict.text}",
        f";;   before: cookie {_cookie(b.cookie)}; net.ipv4.tcp_fastopen={mode}; blackhole {hole}",
        f";;   sent:   method {method}; query in the SYN: {_yes(a.attempted)}; "
        f"SYN data acked: {_yes(a.syn_data_acked)}; client fail: {a.client_fail.name.lower()}; "
        f"SYN retransmits: {a.syn_retransmits}",
        f";;   after:  cookie {a.cookie_change.value}: {_cookie(a.cookie)}",
        f";;   times:  handshake {_ms(t.handshake_ms)}, first byte {_ms(t.first_byte_ms)}, "
        f"total {_ms(t.total_ms)}; RTT {_ms(t.rtt_ms)} (tcp_info min_rtt; srtt "
        f"{_ms(t.tcpi_rtt_ms)}); rounds {'-' if t.rounds is None else f'{t.rounds:.1f}'}",
    ]
    if a.fallback_reason:
        lines.append(f";;   fallback: {a.fallback.value}: {a.fallback_reason}")
    if t.rtt_ms is not None and t.rtt_ms < 1:
        lines.append(f";;   note: {SHORT_PATH_NOTE}")
    return lines


def short_text(result: QueryResult) -> str:
    """What ``dig +short`` prints: the answer's data, one record per line (a whole transfer)."""
    messages = (result.response,) if result.transfer is None else result.transfer.messages
    return "\n".join(rd.to_text() for m in messages for rrset in m.answer for rd in rrset)


# ---------------------------------------------------------------- JSON


def emit_json(value: Any) -> None:
    """Writes one JSON value on one line (the shapes: :mod:`dnstfo.client.records`)."""
    from dnstfo.client.records import to_line

    out(to_line(value))


# ---------------------------------------------------------------- compare


def compare_text(comparison: Comparison) -> str:
    """The ``+compare`` table: one row per query, then the saving (if any) and the verdict.

    On a sub-millisecond path the rounds are host overhead: they are left out, with the
    note a single query prints, and no saving is claimed.
    """
    from dnstfo.client.compare import FailedStep

    c = comparison
    lines = [f"{'step':<10} {'rounds':>6} {'ms':>9}  {'in SYN':<6} {'acked':<5} cookie", "-" * 60]
    for s in c.in_order():
        if isinstance(s, FailedStep):
            lines.append(f"{s.step.value:<10} {'-':>6} {'-':>9}  no answer: {s.failure.message}")
            continue
        t, a = s.result.tfo.timings, s.result.tfo.after
        rounds = "-" if t.rounds is None or c.short_path else f"{t.rounds:.1f}"
        lines.append(
            f"{s.step.value:<10} {rounds:>6} {t.total_ms or 0:9.1f}  {_yes(a.attempted):<6} "
            f"{_yes(a.syn_data_acked):<5} {a.cookie_change.value}"
        )
    lines.append("-" * 60)
    if c.cookie_note:
        lines.append(f"note: {c.cookie_note}")
    if c.short_path:
        lines.append(f"note: {SHORT_PATH_NOTE}")
    if c.failed:
        total = len(c.steps) + len(c.failed)
        lines.append(f"failed: {len(c.failed)} of {total} queries got no answer")
    times = f"plain TCP {c.baseline_ms:.1f} ms" + (
        "" if c.tfo_ms is None else f", TFO median {c.tfo_ms:.1f} ms"
    )
    if c.saving_ms is None:
        lines.append(f"times: {times}")
    elif c.short_path:
        lines.append(f"saving: not measurable on a path under 1 ms: {times}")
    else:
        rounds = ""
        if c.baseline_rounds is not None and c.tfo_rounds is not None:
            rounds = f" ({c.baseline_rounds:.1f} -> {c.tfo_rounds:.1f} rounds)"
        lines.append(f"saving: {c.saving_ms:.1f} ms per query{rounds}: {times}")
    lines.append(("TFO works: " if c.worked else "") + c.reason)
    return "\n".join(lines)


# ---------------------------------------------------------------- cookies


def cookies_text(entries: list[TcpMetricsEntry]) -> str:
    """The cookie cache as a table (every entry, with or without a cookie)."""
    if not entries:
        return "no entries in the TCP metrics cache"
    lines = [f"{'server':<40} {'source':<40} {'cookie':<34} {'age':>8} syn drops"]
    for e in entries:
        cookie = "-" if e.cookie is None else e.cookie.hex()
        age = "-" if e.age_ms is None else f"{e.age_ms / 1000:.1f}s"
        lines.append(
            f"{e.daddr:<40} {e.saddr or '-':<40} {cookie:<34} {age:>8} {e.fo_syn_drops or 0}"
        )
    return "\n".join(lines)


def cookies_json(entries: list[TcpMetricsEntry]) -> list[dict[str, Any]]:
    """The cookie cache as JSON objects."""
    return [
        {
            "server": e.daddr,
            "source": e.saddr,
            "cookie_hex": None if e.cookie is None else e.cookie.hex(),
            "cookie_len": None if e.cookie is None else len(e.cookie),
            "age_ms": e.age_ms,
            "fo_mss": e.fo_mss,
            "fo_syn_drops": e.fo_syn_drops,
            "rtt_us": e.rtt_us,
        }
        for e in entries
    ]


# ---------------------------------------------------------------- doctor


def doctor_text(
    state: HostState, client: list[str] | None, server: list[str] | None, fix: str
) -> str:
    """The host's TFO state in words, every counter explained, and a verdict per side.

    Args:
        state: the host's state.
        client: what stops querying with TFO here (None: not asked).
        server: what stops serving with TFO here (None: not asked).
        fix: the command that fixes what was asked.
    """
    from dnstfo.kernel.sysctl import KERNEL_NAMES, MEANINGS

    if state.mode is None:
        lines = ["net.ipv4.tcp_fastopen: absent (no TCP Fast Open in this kernel)"]
    else:
        bits = ", ".join(state.mode.describe()) or "none"
        lines = [f"net.ipv4.tcp_fastopen = {int(state.mode)}: {bits}"]
    hole = state.blackhole_timeout_s
    lines.append(
        "blackhole detection: "
        + ("absent" if hole is None else "off" if hole == 0 else f"pauses active TFO {hole} s")
        + f"; suspected blackholes so far: {state.counters.blackhole}"
    )
    key = {None: "unknown (needs root)", True: "set", False: "not set yet (made on first use)"}
    lines.append(f"server key (net.ipv4.tcp_fastopen_key): {key[state.key_set]}")
    lines.append(
        f"socket options: TCP_FASTOPEN_CONNECT {_yes(state.fastopen_connect)}, "
        f"TCP_FASTOPEN_NO_COOKIE {_yes(state.no_cookie)}, "
        f"TCP_FASTOPEN_KEY {_yes(state.listener_key)}"
    )
    lines.append("counters (TcpExt, the whole network namespace, since it was made):")
    for name, meaning in MEANINGS.items():
        value = getattr(state.counters, name)
        lines.append(f"  {KERNEL_NAMES[name]:<26}{value:>9}  {meaning}")
    for side, problems in (("query (client)", client), ("serve (server)", server)):
        if problems is None:
            continue
        lines.append(f"{side} with TCP Fast Open: " + ("no" if problems else "ready"))
        lines += [f"  problem: {p}" for p in problems]
    if client or server:
        lines.append(f"fix: {fix} (root)")
    return "\n".join(lines)


def fix_text(plan: FixPlan, path: str) -> str:
    """What ``--fix`` did and how to make it permanent."""
    if not plan.needed:
        return f"nothing to fix: net.ipv4.tcp_fastopen is already {plan.current}"
    return (
        f"set net.ipv4.tcp_fastopen = {plan.wanted} (was {plan.current})\n"
        f"to keep it after a reboot, add this line to {path}:\n{plan.sysctl_line}"
    )

"""Through the chain, forwarded answers equal Knot DNS's direct answers (real kernel).

Knot DNS serves ``zones/`` in the chain's upstream namespace; ``dnstfo serve --forward``
runs in the forwarder's namespace with one unrelated zone of its own, so every question
here is forwarded. The questions are derived from the zone files: each name's own types,
a type it lacks (NODATA, or a CNAME chain followed), empty non-terminals, a name that
does not exist, names a wildcard synthesises, names under a delegation (referrals). Each
is asked in lower case without EDNS and in mixed case (0x20) with EDNS and the DO bit,
from the client namespace through the forwarder (TCP with Fast Open, and UDP), and of
Knot directly from the forwarder's namespace. Equal means: the same rcode, the question
echoed as asked, and the same RRsets in answer, authority and additional (the OPT record
and the order aside), each forwarded TTL no higher than Knot's. Header flags other than
the rcode are not compared (whether a forwarder keeps AA is its own choice).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

from dnstfo.kernel.tcpinfo import tcp_info
from dnstfo.lab.chain import FORWARDER_V4, UPSTREAM_V4, Chain, ChainSpec, start_chain
from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import Namespace
from tests.knot import ZONES, knot_config
from tests.lab.conftest import requires_lab
from tests.server.serveproc import ServeProcess

pytestmark = [
    pytest.mark.lab,
    pytest.mark.netadmin,
    pytest.mark.linux,
    pytest.mark.interop,
    requires_lab,
]

RTT_MS = 2.0
"""Both links: small, this is not a timing test."""
PORT = 53
CLIENT_NET = "198.18.0.0/24"
"""The client link (the forwarder's ``--forward-allow``)."""
OWN_ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
"""The forwarder's own zone (``own.test.``): unrelated to the questions."""
TIMEOUT_S = 5.0
SECTIONS = ("answer", "authority", "additional")
NODATA_TYPES = ("TXT", "A", "AAAA", "MX", "SRV")
"""The first of these a name lacks is asked for (NODATA); A at a CNAME (the chain)."""


@dataclass(frozen=True, slots=True)
class Question:
    """One query of the comparison."""

    name: str
    """The question name as sent, case included."""
    rdtype: str
    """The question type."""
    dnssec_ok: bool
    """With EDNS (payload 1232) and the DO bit; without EDNS otherwise."""

    def message(self) -> dns.message.Message:
        """The query (recursion desired, as a stub asks a forwarder)."""
        if self.dnssec_ok:
            return dns.message.make_query(
                self.name, self.rdtype, use_edns=0, payload=1232, want_dnssec=True
            )
        return dns.message.make_query(self.name, self.rdtype)

    def swapcase(self) -> Question:
        """The same question with every letter's case flipped."""
        return Question(self.name.swapcase(), self.rdtype, self.dnssec_ok)


def _mixed_case(name: str) -> str:
    """Alternating upper and lower case letters, as a 0x20 client sends them."""
    out, upper = [], True
    for char in name:
        if char.isalpha():
            char = char.upper() if upper else char.lower()
            upper = not upper
        out.append(char)
    return "".join(out)


def zone_pairs(zones: Path = ZONES) -> list[tuple[str, str]]:
    """(name, type) pairs covering the zone files in ``zones``, sorted."""
    pairs: set[tuple[str, str]] = set()
    for path in sorted(zones.glob("*.zone")):
        origin = dns.name.from_text(path.name.removesuffix(".zone"))
        zone = dns.zone.from_file(str(path), origin=origin, relativize=False)
        names = set(zone.nodes)
        cuts = {n for n in names if n != origin and zone.get_rdataset(n, "NS") is not None}
        pairs.add((f"nothere.{origin}", "A"))  # NXDOMAIN
        for name in names:
            node = zone.nodes[name]
            types = {dns.rdatatype.to_text(r.rdtype) for r in node}
            if name.labels[0] == b"*":  # synthesised names: one label, two, and a NODATA
                parent = name.parent()
                for owner in (f"any.{parent}", f"a.b.{parent}"):
                    pairs.update((owner, t) for t in types)
                    pairs.add((owner, "MX"))
                continue
            pairs.update((name.to_text(), t) for t in types)
            lacking = [t for t in NODATA_TYPES if t not in types]
            pairs.add((name.to_text(), "A" if "CNAME" in types else lacking[0]))
            if name in cuts:
                pairs.add((f"host.{name}", "A"))  # below the cut: a referral
            ancestor = name.parent()
            while ancestor != origin and ancestor.is_subdomain(origin):
                if ancestor not in names:
                    pairs.add((ancestor.to_text(), "A"))  # an empty non-terminal
                ancestor = ancestor.parent()
    return sorted(pairs)


def zone_questions() -> list[Question]:
    """Each pair twice: lower case without EDNS, mixed case with EDNS and DO."""
    out: list[Question] = []
    for name, rdtype in zone_pairs():
        out.append(Question(name.lower(), rdtype, dnssec_ok=False))
        out.append(Question(_mixed_case(name), rdtype, dnssec_ok=True))
    return out


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed before the whole answer")
        data += chunk
    return data


def ask_tcp(sock: socket.socket, address: str, query: dns.message.Message) -> tuple[bytes, bool]:
    """One query on a fresh connection opened with ``sendto(MSG_FASTOPEN)`` (blocking: without
    a cookie the kernel completes the handshake first); (answer, SYN data acknowledged)."""
    with sock:
        wire = query.to_wire()
        sock.sendto(struct.pack("!H", len(wire)) + wire, socket.MSG_FASTOPEN, (address, PORT))
        sock.settimeout(TIMEOUT_S)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        return _recv_exact(sock, length), tcp_info(sock).syn_data


def ask_udp(sock: socket.socket, address: str, query: dns.message.Message) -> bytes:
    """One query over UDP on ``sock`` (the answer from ``address`` with the query's ID)."""
    sock.settimeout(TIMEOUT_S)
    sock.sendto(query.to_wire(), (address, PORT))
    while True:
        data, source = sock.recvfrom(65535)
        if source[0] == address and data[:2] == struct.pack("!H", query.id):
            return data


@dataclass(frozen=True, slots=True)
class Asked:
    """One question's answers over one transport."""

    question: Question
    """What was asked."""
    query: dns.message.Message
    """The query sent (both ways, same ID)."""
    transport: str
    """``tcp`` or ``udp``."""
    direct: dns.message.Message
    """Knot's answer, asked directly."""
    forwarded: dns.message.Message
    """The forwarder's answer."""


def ask_both(chain: Chain, questions: list[Question]) -> tuple[list[Asked], int, int]:
    """Each question over TCP and UDP, through the forwarder and of Knot directly;
    (answers, TCP queries, of them with SYN data acknowledged)."""

    def udp(ns: Namespace) -> socket.socket:
        return ns.in_thread(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)

    def tcp(ns: Namespace) -> socket.socket:
        return ns.in_thread(socket.socket, socket.AF_INET, socket.SOCK_STREAM)

    out: list[Asked] = []
    tcp_count = syn_acked = 0
    with udp(chain.client) as client_udp, udp(chain.forwarder) as direct_udp:
        for question in questions:
            query = question.message()
            direct = ask_udp(direct_udp, UPSTREAM_V4, query)
            forwarded = ask_udp(client_udp, FORWARDER_V4, query)
            out.append(
                Asked(
                    question,
                    query,
                    "udp",
                    dns.message.from_wire(direct),
                    dns.message.from_wire(forwarded),
                )
            )
            direct, _ = ask_tcp(tcp(chain.forwarder), UPSTREAM_V4, query)
            forwarded, in_syn = ask_tcp(tcp(chain.client), FORWARDER_V4, query)
            out.append(
                Asked(
                    question,
                    query,
                    "tcp",
                    dns.message.from_wire(direct),
                    dns.message.from_wire(forwarded),
                )
            )
            tcp_count += 1
            syn_acked += in_syn
    return out, tcp_count, syn_acked


def _rrsets(message: dns.message.Message) -> dict[tuple[str, str, int, int], dns.rrset.RRset]:
    """RRsets by (section, owner in lower case, type, covered type); OPT is not among them."""
    out: dict[tuple[str, str, int, int], dns.rrset.RRset] = {}
    for section in SECTIONS:
        for rrset in getattr(message, section):
            owner = rrset.name.to_text().lower()
            out[(section, owner, int(rrset.rdtype), int(rrset.covers))] = rrset
    return out


def differences(asked: Asked) -> list[str]:
    """How the forwarded answer differs from Knot's (empty: equal)."""
    query, direct, got = asked.query, asked.direct, asked.forwarded
    found: list[str] = []
    if got.id != query.id:
        found.append(f"id {got.id} for query id {query.id}")
    sent = [(q.name.to_text(), q.rdtype) for q in query.question]
    echoed = [(q.name.to_text(), q.rdtype) for q in got.question]
    if echoed != sent:  # case-sensitive: a 0x20 client checks its own case comes back
        found.append(f"question {echoed} for {sent}")
    if got.rcode() != direct.rcode():
        found.append(
            f"rcode {dns.rcode.to_text(got.rcode())} != {dns.rcode.to_text(direct.rcode())}"
        )
    want, have = _rrsets(direct), _rrsets(got)
    for key in sorted(want.keys() | have.keys()):
        if key not in have:
            found.append(f"missing {key[0]}: {want[key]}")
        elif key not in want:
            found.append(f"extra {key[0]}: {have[key]}")
        elif have[key] != want[key]:  # records compared as sets, names without case
            found.append(f"{key[0]}: {have[key]} != {want[key]}")
        elif have[key].ttl > want[key].ttl:
            found.append(f"{key[0]}: TTL {have[key].ttl} > {want[key].ttl}: {have[key]}")
    return found


def report(asked: list[Asked]) -> list[str]:
    """One line per differing answer."""
    lines = []
    for one in asked:
        found = differences(one)
        if found:
            q = one.question
            lines.append(f"{q.name} {q.rdtype} do={q.dnssec_ok} {one.transport}: {found}")
    return lines


def is_referral(message: dns.message.Message) -> bool:
    """No answer, and NS records in the authority section (no SOA)."""
    kinds = {r.rdtype for r in message.authority}
    return not message.answer and dns.rdatatype.NS in kinds and dns.rdatatype.SOA not in kinds


def check_not_trivial(asked: list[Asked]) -> None:
    """Knot's own answers cover what the zones hold: a failing smell otherwise."""
    directs = [a.direct for a in asked]
    assert all(m.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) for m in directs)
    with_answer = [m for m in directs if m.answer]
    nxdomain = [m for m in directs if m.rcode() == dns.rcode.NXDOMAIN]
    nodata = [
        m
        for m in directs
        if m.rcode() == dns.rcode.NOERROR
        and not m.answer
        and any(r.rdtype == dns.rdatatype.SOA for r in m.authority)
    ]
    referrals = [m for m in directs if is_referral(m)]
    chains = [m for m in directs if sum(r.rdtype == dns.rdatatype.CNAME for r in m.answer) >= 2]
    additional = [m for m in directs if m.additional]
    synthesised = [
        m for m in directs if m.answer and m.answer[0].name.to_text().lower().startswith("a.b.")
    ]
    types = {r.rdtype for m in directs for r in m.answer}
    for what, found in (
        ("answers", with_answer),
        ("NXDOMAIN", nxdomain),
        ("NODATA", nodata),
        ("referrals", referrals),
        ("CNAME chains", chains),
        ("additional data", additional),
        ("wildcard answers", synthesised),
    ):
        assert found, f"no {what} among Knot's answers"
    wanted = {"A", "AAAA", "MX", "NS", "SOA", "TXT", "CNAME", "SRV", "DS"}
    assert {dns.rdatatype.to_text(t) for t in types} >= wanted
    assert len(with_answer) >= len(directs) // 2


def _forwarded_notes(log: list[str]) -> list[tuple[str, str, bool]]:
    """(transport, forward note, query in the SYN) of each forwarded query in a JSON log."""
    out = []
    for line in log:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("forward"):
            out.append((str(entry["transport"]), str(entry["forward"]), bool(entry["tfo"])))
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A chain at 2 ms per link with knotd in the upstream namespace on port 53."""
    run = tmp_path_factory.mktemp("knot")
    with start_chain(ChainSpec(rtt_ms=RTT_MS, upstream_rtt_ms=RTT_MS)) as running:
        conf = knot_config(run, UPSTREAM_V4, PORT)
        argv = ["ip", "netns", "exec", running.upstream.name, "knotd", "-c", str(conf)]
        knot = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(running.upstream, knot, PORT, "knotd")
            yield running
        finally:
            stop_server(knot)


@contextlib.contextmanager
def forwarder(chain: Chain, own: Path, cache_size: int) -> Iterator[ServeProcess]:
    """``dnstfo serve --forward`` in the forwarder's namespace, its log read as it comes (a
    JSON line per query: a log read only at the end would fill the pipe and stall it)."""
    args = ["--zone", str(own), "--listen", f"{FORWARDER_V4}:{PORT}",
            "--forward", f"{UPSTREAM_V4}:{PORT}", "--forward-allow", CLIENT_NET,
            "--forward-cache-size", str(cache_size), "--query-log", "json"]  # fmt: skip
    with ServeProcess(args, prefix=["ip", "netns", "exec", chain.forwarder.name]) as server:
        server.wait_for(re.escape(f"serving {FORWARDER_V4}:{PORT} over"))
        yield server
        assert server.stop() == 0, server.text


@pytest.fixture
def own_zone(tmp_path: Path) -> Path:
    """A directory with the forwarder's own zone, readable by everyone."""
    (tmp_path / "own.test.zone").write_text(OWN_ZONE)
    tmp_path.chmod(0o755)
    return tmp_path


def test_forwarded_answers_equal_knots(chain: Chain, own_zone: Path) -> None:
    questions = zone_questions()
    with forwarder(chain, own_zone, 0) as server:
        asked, tcp_count, syn_acked = ask_both(chain, questions)
    check_not_trivial(asked)
    assert report(asked) == []
    # Every query went upstream (no cache), and TCP ones came in the SYN once a cookie was
    # cached (the first fetched it).
    notes = _forwarded_notes(server.lines)
    assert len(notes) == len(asked)
    assert all(note.startswith("upstream=") for _, note, _ in notes), notes
    assert syn_acked >= tcp_count - 1
    assert sum(in_syn for transport, _, in_syn in notes if transport == "tcp") >= tcp_count - 1


def test_cached_answers_equal_knots(chain: Chain, own_zone: Path) -> None:
    """With the cache on: the first asking fills it, the second (every letter's case
    flipped) is served from it, and both equal Knot's answers, TTLs no higher."""
    questions = zone_questions()
    with forwarder(chain, own_zone, 10000) as server:
        first, _, _ = ask_both(chain, questions)
        second, _, _ = ask_both(chain, [q.swapcase() for q in questions])
    check_not_trivial(second)
    assert report(first) == []
    assert report(second) == []
    notes = _forwarded_notes(server.lines)
    assert len(notes) == len(first) + len(second)
    # Every answer comes from the cache the second time: records, an SOA (RFC 2308), or
    # a referral's NS records give it a lifetime.
    missed = [
        (one.question, note)
        for one, (_, note, _) in zip(second, notes[len(first) :], strict=True)
        if note != "forward=cache"
    ]
    assert missed == []

"""Wire evidence in the lab: the capture's fields agree with tshark, the crafted SYN's answers.

The lab's RTT here is 20 ms: what is checked (options, lengths, acknowledgments) does not
depend on the path's length, and a short path keeps the module quick.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dnstfo.kernel import tcp_metrics
from dnstfo.lab.delay import Fault
from dnstfo.lab.ping import ping_exchange, ping_server
from dnstfo.lab.topology import Lab, LabSpec, start_lab
from dnstfo.probe.observe import OptionKind, SynOnlyObservation, WireEvidence
from dnstfo.probe.wire_evidence import capture, capture_filter, syn_only_check, wire_evidence
from tests.lab.conftest import lab_missing, requires_lab

PORT = 5300


# --- pure: the parser on packets built with scapy -------------------------------------------


def _packet(src: tuple[str, int], dst: tuple[str, int], flags: str, **kw: object) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    payload = kw.pop("payload", b"")
    built = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, **kw)
    return bytes(built / Raw(payload)) if payload else bytes(built)


C, S = ("198.18.0.1", 40000), ("198.18.0.2", 53)


def test_a_cookie_request_and_the_cookie_that_answers_it() -> None:
    packets = [
        _packet(C, S, "S", seq=100, options=[("MSS", 1460), ("TFO", b"")]),
        _packet(S, C, "SA", seq=7, ack=101, options=[("TFO", b"12345678")]),
        _packet(C, S, "A", seq=101, ack=8),
    ]
    assert wire_evidence(packets, C) == WireEvidence(
        syn_kind=OptionKind.FASTOPEN,
        syn_cookie_len=0,
        synack_kind=OptionKind.FASTOPEN,
        synack_cookie_len=8,
        syn_data_len=0,
        syn_data_acked=False,  # no payload: nothing to acknowledge
        syn_count=1,
        retransmitted_syn_kind=None,
        retransmitted_syn_data_len=0,
    )


def test_experimental_option_with_data_not_acknowledged_then_resent_plain() -> None:
    exp = [(254, b"\xf9\x89" + b"abcdefgh")]
    packets = [
        _packet(C, S, "S", seq=100, options=exp, payload=b"q" * 30),
        _packet(C, S, "S", seq=100),
        _packet(S, C, "SA", seq=7, ack=101),
    ]
    found = wire_evidence(packets, C)
    assert found is not None
    assert (found.syn_kind, found.syn_cookie_len, found.syn_data_len) == (
        OptionKind.EXPERIMENTAL,
        8,
        30,
    )
    assert (found.synack_kind, found.synack_cookie_len) == (None, None)
    assert found.syn_data_acked is False
    assert (found.syn_count, found.retransmitted_syn_kind) == (2, None)


def test_no_syn_of_ours_is_no_evidence() -> None:
    assert wire_evidence([_packet(S, C, "SA", seq=1, ack=2)], C) is None
    assert capture_filter([53, 5353, 53]) == "tcp and (port 53 or port 5353)"
    assert capture_filter(None) == "tcp"


# --- in the lab -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if reason := lab_missing():
        pytest.skip(reason)
    with start_lab(LabSpec(rtt_ms=20.0)) as running:
        yield running


@pytest.fixture
def fresh(lab: Lab) -> Lab:
    lab.delay.configure(lab.spec.delay_config())
    lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
    lab.client.run(tcp_metrics.flush)
    return lab


def _captured_exchanges(
    pcap: str, server: tuple[str, int], count: int
) -> list[tuple[int, WireEvidence | None]]:
    """In the client namespace: ``count`` ping exchanges captured; (port, evidence) each."""
    found = []
    with capture(Path(pcap), [server[1]]) as cap:
        for _ in range(count):
            x = ping_exchange(server)
            source = ("198.18.0.1", x.local_port)
            found.append((x.local_port, wire_evidence(cap.claim(source, server), source)))
    return found


def tshark_evidence(pcap: Path) -> dict[int, WireEvidence]:
    """The same fields, as tshark reads the pcap: client port -> evidence."""
    fields = ["tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack", "tcp.seq_raw"]
    fields += ["tcp.ack_raw", "tcp.len", "tcp.option_kind", "tcp.options.tfo.cookie"]
    fields += ["tcp.options.experimental.exid"]
    argv = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=/t"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    syns: dict[int, list[dict[str, str]]] = {}
    synacks: dict[int, dict[str, str]] = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("\t"), strict=True))
        if row["tcp.flags.syn"] not in ("1", "True"):
            continue
        if row["tcp.flags.ack"] in ("1", "True"):
            synacks.setdefault(int(row["tcp.dstport"]), row)
        else:
            syns.setdefault(int(row["tcp.srcport"]), []).append(row)

    def option(row: dict[str, str] | None) -> tuple[OptionKind | None, int | None]:
        if row is None:
            return None, None
        kinds = {int(k) for k in row["tcp.option_kind"].split(",") if k}
        cookie = len(bytes.fromhex(row["tcp.options.tfo.cookie"].replace(":", "")))
        if "0xf989" in row["tcp.options.experimental.exid"].lower() or (
            row["tcp.options.experimental.exid"] == str(0xF989)
        ):
            return OptionKind.EXPERIMENTAL, cookie
        if 34 in kinds:
            return OptionKind.FASTOPEN, cookie
        return None, None

    result = {}
    for port, rows in syns.items():
        first, synack = rows[0], synacks.get(port)
        kind, clen = option(first)
        akind, aclen = option(synack)
        dlen = int(first["tcp.len"])
        acked = None
        if synack is not None:
            acked = (
                dlen > 0
                and int(synack["tcp.ack_raw"]) == (int(first["tcp.seq_raw"]) + 1 + dlen) % 2**32
            )
        resent = len(rows) > 1
        result[port] = WireEvidence(
            syn_kind=kind,
            syn_cookie_len=clen,
            synack_kind=akind,
            synack_cookie_len=aclen,
            syn_data_len=dlen,
            syn_data_acked=acked,
            syn_count=len(rows),
            retransmitted_syn_kind=option(rows[-1])[0] if resent else None,
            retransmitted_syn_data_len=int(rows[-1]["tcp.len"]) if resent else 0,
        )
    return result


needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="needs tshark (scripts/sysdeps.sh installs it)"
)


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
@needs_tshark
@pytest.mark.parametrize("fault", [None, Fault.STRIP_TFO_SYNACK, Fault.DROP_SYN_DATA])
def test_the_pcap_read_by_tshark_agrees_with_the_parsed_fields(
    fresh: Lab, fault: Fault | None
) -> None:
    with ping_server(fresh.server, fresh.server_v4, PORT) as server:
        if fault is Fault.DROP_SYN_DATA:  # a cookie first, so that the SYN carries data
            fresh.client.run(ping_exchange, server)
        if fault is not None:
            fresh.delay.configure(replace(fresh.delay.config, faults=frozenset({fault})))
        with tempfile.TemporaryDirectory() as tmp:
            pcap = Path(tmp) / "probe.pcap"
            parsed = fresh.client.run(_captured_exchanges, str(pcap), server, 2, timeout=60)
            read = tshark_evidence(pcap)
    assert sorted(read) == sorted(port for port, _ in parsed)
    for port, evidence in parsed:
        assert evidence == read[port], port
    (_, first), (_, second) = parsed
    assert first is not None
    assert second is not None
    if fault is None:  # a cookie request answered with a cookie, then data in the SYN, acked
        assert (first.syn_kind, first.syn_cookie_len, first.syn_data_len) == (
            OptionKind.FASTOPEN,
            0,
            0,
        )
        assert (first.synack_kind, first.synack_cookie_len) == (OptionKind.FASTOPEN, 8)
        assert (second.syn_cookie_len, second.syn_data_len) == (8, len(b"PING\n"))
        assert second.syn_data_acked
    elif fault is Fault.STRIP_TFO_SYNACK:  # asked, never answered: kind 34, then 254
        assert first.syn_kind is OptionKind.FASTOPEN
        assert first.synack_kind is None
        assert second.syn_kind is OptionKind.EXPERIMENTAL
        assert second.synack_kind is None
    else:  # the SYN with data vanished; the kernel resent it plain
        assert second.syn_data_len == len(b"PING\n")
        assert second.syn_count == 2
        assert second.retransmitted_syn_kind is None
        assert second.retransmitted_syn_data_len == 0
        assert second.syn_data_acked is False


def _syn_only(address: str, port: int) -> SynOnlyObservation:
    return syn_only_check(address, port, timeout=2.0)


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
def test_syn_only_says_whether_the_server_answers_a_cookie_request(fresh: Lab) -> None:
    host = fresh.server_v4
    with ping_server(fresh.server, host, PORT):
        offered = fresh.client.run(_syn_only, host, PORT)
        fresh.server.write_sysctls({"net.ipv4.tcp_fastopen": "1"})
        bit_off = fresh.client.run(_syn_only, host, PORT)
        fresh.server.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
        fresh.delay.configure(
            replace(fresh.delay.config, faults=frozenset({Fault.STRIP_TFO_SYNACK}))
        )
        stripped = fresh.client.run(_syn_only, host, PORT)
        fresh.delay.configure(fresh.spec.delay_config())
    nothing = fresh.client.run(_syn_only, host, PORT + 1)
    assert (offered.answered, offered.option_kind, offered.cookie_len) == (
        True,
        OptionKind.FASTOPEN,
        8,
    )
    assert offered.rtt_ms is not None
    assert offered.rtt_ms >= 20 * 0.99
    assert (bit_off.answered, bit_off.option_kind, bit_off.cookie_len) == (True, None, None)
    assert (stripped.answered, stripped.option_kind) == (True, None)
    assert not nothing.answered
    assert nothing.error is not None
    assert "reset" in nothing.error
    # Half-open connections were reset: the server holds none.
    out = fresh.server.exec(["ss", "-Htn", "state", "syn-recv"]).stdout
    assert out.strip() == ""
    # The crafted SYN left the client's cookie cache alone (no socket of the kernel's).
    assert fresh.client.run(tcp_metrics.cookie_for, host) is None

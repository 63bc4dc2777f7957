from __future__ import annotations

import socket
import struct

import pytest

from dnstfo.kernel.tcpinfo import (
    _STRUCT,
    FastOpenClientFail,
    TcpiOption,
    TcpState,
    parse_tcp_info,
    tcp_info,
)


def raw_info(*, state: int = 1, options: int = 0, bitfield: int = 0, rtt: int = 0) -> bytes:
    raw = bytearray(_STRUCT.size)
    raw[0], raw[5], raw[7] = state, options, bitfield
    struct.pack_into("=I", raw, 8 + 4 * 15, rtt)  # tcpi_rtt: 16th u32 after 8 bytes
    return bytes(raw)


def test_flags_and_client_fail_bitfield() -> None:
    info = parse_tcp_info(raw_info(options=0x20 | 0x80 | 0x1, bitfield=0b101, rtt=50_000))
    assert info.state is TcpState.ESTABLISHED
    assert info.syn_data
    assert info.tfo_child
    assert TcpiOption.TIMESTAMPS in info.options
    # bit 0 is delivery_rate_app_limited; bits 1-2 are fastopen_client_fail
    assert info.fastopen_client_fail is FastOpenClientFail.DATA_NOT_ACKED
    assert info.rtt_us == 50_000


@pytest.mark.parametrize("fail", list(FastOpenClientFail))
def test_every_client_fail_value(fail: FastOpenClientFail) -> None:
    assert parse_tcp_info(raw_info(bitfield=fail << 1)).fastopen_client_fail is fail


def test_short_struct_from_an_older_kernel() -> None:
    old = raw_info(rtt=1234)[:104]  # struct tcp_info of Linux 3.x ends at tcpi_total_retrans
    info = parse_tcp_info(old)
    assert info.rtt_us == 1234
    assert info.segs_out is None
    assert info.bytes_sent is None


def test_too_short_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        parse_tcp_info(b"\x01" * 40)


@pytest.mark.linux
def test_real_socket_reports_established_with_rtt() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        peer, _ = server.accept()
        with peer:
            client.sendall(b"x")
            assert peer.recv(1) == b"x"
            info = tcp_info(client)
    assert info.state is TcpState.ESTABLISHED
    assert not info.syn_data
    assert info.rtt_us > 0
    assert info.bytes_acked is not None
    assert info.bytes_acked >= 1

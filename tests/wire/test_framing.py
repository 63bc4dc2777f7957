from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnstfo.errors import FrameTooLarge, RemoteProtocolError
from dnstfo.wire.framing import MAX_MESSAGE, FrameDecoder, frame

messages = st.lists(st.binary(min_size=1, max_size=600), max_size=8)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    return out


def test_frame_prefixes_length_in_one_buffer() -> None:
    assert frame(b"\x01\x02\x03") == b"\x00\x03\x01\x02\x03"


@pytest.mark.parametrize("size", [0, MAX_MESSAGE + 1])
def test_frame_rejects_impossible_sizes(size: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        frame(b"x" * size)


def test_whole_bytewise_and_trailing_bytes() -> None:
    stream = frame(b"abc") + frame(b"de")
    assert FrameDecoder().feed(stream) == [b"abc", b"de"]
    assert feed_bytewise(FrameDecoder(), stream) == [b"abc", b"de"]
    decoder = FrameDecoder()
    assert decoder.feed(stream + b"\x00\x05xy") == [b"abc", b"de"]
    assert decoder.buffered == 4
    assert decoder.feed(b"zuv") == [b"xyzuv"]
    assert decoder.buffered == 0


def test_size_limit_is_checked_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_size=512)
    with pytest.raises(FrameTooLarge, match="513 bytes exceeds the limit of 512"):
        decoder.feed(b"\x02\x01")


def test_zero_length_frame_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        FrameDecoder().feed(b"\x00\x00")


def test_eof_inside_a_frame_is_reported() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x05ab")
    with pytest.raises(RemoteProtocolError, match="2 of 5 bytes"):
        decoder.feed_eof()
    half = FrameDecoder()
    half.feed(b"\x00")
    with pytest.raises(RemoteProtocolError, match="length prefix"):
        half.feed_eof()


def test_clean_eof_then_no_more_data() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"q")) == [b"q"]
    decoder.feed_eof()
    with pytest.raises(RemoteProtocolError, match="after end of stream"):
        decoder.feed(b"\x00")


@given(messages, st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_round_trip_in_any_chunking(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in msgs)
    decoder = FrameDecoder()
    got: list[bytes] = []
    pos = 0
    for cut in cuts:
        got += decoder.feed(stream[pos : pos + cut])
        pos += cut
    got += decoder.feed(stream[pos:])
    decoder.feed_eof()
    assert got == msgs
    assert feed_bytewise(FrameDecoder(), stream) == msgs


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder(max_size=100)
    try:
        for m in decoder.feed(data):
            assert 0 < len(m) <= 100
        decoder.feed_eof()
    except RemoteProtocolError:
        pass


def test_messages_before_a_bad_frame_are_kept() -> None:
    decoder = FrameDecoder(max_size=100)
    assert decoder.feed(frame(b"ok") + b"\x00\x00rest") == [b"ok"]
    assert isinstance(decoder.error, RemoteProtocolError)
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        decoder.feed(b"more")
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        decoder.feed_eof()
    too_big = FrameDecoder(max_size=100)
    assert too_big.feed(frame(b"a") + frame(b"b") + b"\x01\x00") == [b"a", b"b"]
    assert isinstance(too_big.error, FrameTooLarge)

"""One DNS exchange on a delay line, its time split between the link and the two ends.

A delay line logs when it read each packet from one side and wrote it to the other (both
on the monotonic clock). For one connection's exchange (a query, then its answer) that
log tells which part of the time the packets were on the link and which part an end's
program held the exchange:

- the span: from the line reading the near end's first packet (its SYN, or the query on a
  connection already open) to its writing the answer's last segment;
- the far end's hold: from the line writing the query's last segment to its reading the
  answer's first (the server read, worked, wrote);
- the near end's hold: without the query in the SYN, from the line writing the SYN-ACK to
  its reading the query's first segment (the client's program saw the connection open
  and sent the query);
- the link: the span less both holds. That is the delay line's time on the exchange's
  path plus the kernels' (a SYN-ACK, an ACK: microseconds), so n round trips take n
  RTTs of the link, whatever the ends' programs and their scheduling cost.

The line stamps a read right after ``read`` returns and a write right after ``write``
returns; writing into a TUN device runs the receiving kernel's input path in that call,
so a hold may start some microseconds late: a link's time is at most that much long.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnstfo.errors import LabError
from dnstfo.lab.delay import Direction, PacketRecord


@dataclass(frozen=True, slots=True)
class ExchangeTimes:
    """One exchange on a delay line, in nanoseconds of the monotonic clock."""

    span_ns: int
    """From the line reading the near end's first packet to its writing the whole answer."""
    far_ns: int
    """The far end held the query: from its whole query to its answer's first segment."""
    near_ns: int
    """The near end held the handshake: from the SYN-ACK to the query (0: query in the SYN)."""
    opened: bool
    """The exchange opened its connection (its first packet was a SYN)."""

    @property
    def link_ns(self) -> int:
        """The span less both ends' holds: the exchange's time on the link."""
        return self.span_ns - self.far_ns - self.near_ns


def exchange_times(packets: list[PacketRecord], port: int | None = None) -> ExchangeTimes | None:
    """The times of one exchange in a delay line's packet log.

    Args:
        packets: the log (packets of other connections are ignored).
        port: the near end's TCP port; None: the port of the first packet from the near
            end (the client side of the line) that opens a connection or carries data.

    Returns:
        The times; None when the near end sent nothing (no SYN, no data) in the log.

    Raises:
        LabError: the log has no whole exchange on that connection.
    """
    tcp = [p for p in packets if p.tcp]
    out = [p for p in tcp if p.direction is Direction.C2S and (port is None or p.sport == port)]
    first = next((p for p in out if p.is_syn or p.payload_len), None)
    if first is None:
        if port is None:
            return None
        raise LabError(f"the delay line's log has nothing from port {port}")
    port = first.sport
    back = [p for p in tcp if p.direction is Direction.S2C and p.dport == port]
    answer = [p for p in back if p.payload_len and p.sent_ns is not None]
    if not answer:
        raise LabError(f"the delay line's log has no answer to port {port}")
    query = [p for p in out if p.payload_len and p.received_ns < answer[0].received_ns]
    sent = [p.sent_ns for p in query if p.sent_ns is not None]
    if not sent:
        raise LabError(f"the delay line's log has no query from port {port} before its answer")
    near = 0
    if not first.payload_len:  # the program sent the query once the handshake was over
        synack = next((p for p in back if p.is_synack and p.sent_ns is not None), None)
        if synack is not None and synack.sent_ns is not None:
            near = query[0].received_ns - synack.sent_ns
    last = answer[-1].sent_ns
    assert last is not None  # kept above
    return ExchangeTimes(
        span_ns=last - first.received_ns,
        far_ns=answer[0].received_ns - max(sent),
        near_ns=near,
        opened=first.is_syn,
    )

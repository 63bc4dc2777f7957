"""What to probe: targets from arguments, files (lines, PATHspider jobs, CSV) and NS sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Target:
    """One server address to probe."""

    address: str
    """IP address literal (PATHspider's ``dip``)."""
    port: int = 53
    """TCP port (``dp``)."""
    domain: str | None = None
    """The zone it serves, if known (``domain``): the query asks for its SOA."""
    extra: Mapping[str, object] = field(default_factory=dict)
    """Every other key of the input job, kept in the record as given."""
    origin: str | None = None
    """Where it came from (``file:line``, an argument), for messages."""

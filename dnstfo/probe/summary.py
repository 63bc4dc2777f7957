"""Summaries of probe records: per verdict, per condition, round trips, per vantage point.

Works on the records' JSON form, so it summarises and merges files from several runs and
vantage points (each record names its ``vantage``) as well as a run in progress.
"""

from __future__ import annotations

import collections
import json
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from dnstfo.client.report import short_path
from dnstfo.errors import UsageError


@dataclass(slots=True)
class Summary:
    """Counts over many records (add them one at a time; memory grows with counts only)."""

    targets: int = 0
    """Records seen."""
    verdicts: collections.Counter[str] = field(default_factory=collections.Counter)
    """Records per verdict."""
    conditions: collections.Counter[str] = field(default_factory=collections.Counter)
    """Records per PATHspider condition."""
    vantages: collections.Counter[str] = field(default_factory=collections.Counter)
    """Records per vantage point."""
    baseline_rounds: collections.Counter[float] = field(default_factory=collections.Counter)
    """Answered baseline connections per rounds value (one decimal: a bounded histogram)."""
    tfo_rounds: collections.Counter[float] = field(default_factory=collections.Counter)
    """Answered TFO connections per rounds value."""
    short_path: int = 0
    """Records of targets on a path under 1 ms of RTT: their rounds measure the hosts'
    overhead, so they are left out of the round-trip histograms."""
    track_targets: bool = False
    """Keep each target's verdict per vantage point (for ``disagreements``; memory grows
    with the number of targets, so a live run leaves it off)."""
    by_target: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    """(dip, dp) -> vantage point -> verdict (the last record of each pair counts)."""

    def add(self, record: Mapping[str, Any]) -> None:
        """Counts one record (its JSON form)."""
        self.targets += 1
        self.verdicts[str(record.get("verdict"))] += 1
        for c in record.get("conditions") or ():
            self.conditions[str(c)] += 1
        vantage = record.get("vantage") or {}
        where = str(vantage.get("host") if isinstance(vantage, dict) else vantage)
        self.vantages[where] += 1
        if self.track_targets:
            key = (str(record.get("dip")), int(record.get("dp") or 0))
            self.by_target.setdefault(key, {})[where] = str(record.get("verdict"))
        conns = record.get("connections") or ()
        if short_path(_float(c.get("rtt_ms")) for c in conns):
            self.short_path += 1
            return
        for conn in conns:
            rounds = conn.get("rounds")
            if rounds is None or conn.get("rcode") is None:
                continue
            if conn.get("step") == "baseline":
                self.baseline_rounds[round(float(rounds), 1)] += 1
            elif conn.get("step") == "tfo":
                self.tfo_rounds[round(float(rounds), 1)] += 1

    def disagreements(self) -> list[tuple[tuple[str, int], dict[str, str]]]:
        """Targets seen from several vantage points with different verdicts.

        The server is the same, so the difference lies on the paths (or the vantage
        points): the verdict per vantage point says where to look.
        """
        return sorted(
            (key, seen)
            for key, seen in self.by_target.items()
            if len(seen) > 1 and len(set(seen.values())) > 1
        )

    @property
    def shared_targets(self) -> int:
        """Targets seen from more than one vantage point."""
        return sum(len(seen) > 1 for seen in self.by_target.values())

    @property
    def median_baseline_rounds(self) -> float | None:
        """Median round trips without TFO (None: no answered baseline)."""
        return _median(self.baseline_rounds)

    @property
    def median_tfo_rounds(self) -> float | None:
        """Median round trips of TFO connections (None: none answered)."""
        return _median(self.tfo_rounds)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _median(histogram: collections.Counter[float]) -> float | None:
    """The median of a histogram (the mean of the two middle values for an even count)."""
    total = sum(histogram.values())
    if not total:
        return None
    middle = ((total - 1) // 2, total // 2)
    found: list[float] = []
    seen = 0
    for value in sorted(histogram):
        count = histogram[value]
        found += [value for i in middle if seen <= i < seen + count]
        seen += count
    return round(statistics.fmean(found), 2)


def read_records(stream: TextIO, name: str) -> Iterator[dict[str, Any]]:
    """The records of an ndjson file, lazily.

    Raises:
        UsageError: a line is not a probe record, a JSON object with a verdict
            (named ``file:line``).
    """
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name}:{number}: not a JSON record: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise UsageError(f"{name}:{number}: not a JSON object")
        if "verdict" not in record:
            raise UsageError(f"{name}:{number}: not a probe record (no verdict)")
        yield record


def summarise(records: Iterable[Mapping[str, Any]]) -> Summary:
    """Counts every record."""
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary

"""Knot DNS (``knotd``) as the tests' third-party peer: one configuration for every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ZONES = Path(__file__).resolve().parents[1] / "zones"

_CONF = """\
server:
    rundir: "{run}"
    listen: {address}@{port}
    tcp-fastopen: on
    tcp-reuseport: off
    background-workers: 1
    tcp-workers: 1
    udp-workers: 1
database:
    storage: "{run}"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{zones}"
    file: "%s.zone"
    semantic-checks: off
zone:
  - domain: example.com
  - domain: example.net
"""


def knot_config(run: Path, address: str, port: int) -> Path:
    """Writes ``run/knot.conf``: the example zones on ``address@port`` with TFO on, one
    worker per kind; skips the test when knotd is not installed."""
    if shutil.which("knotd") is None:
        pytest.skip("needs knotd (Debian package knot; scripts/sysdeps.sh installs it)")
    conf = run / "knot.conf"
    conf.write_text(_CONF.format(run=run, address=address, port=port, zones=ZONES))
    return conf

"""The DNS-over-TCP client: one exchange, with a report of what TCP Fast Open did.

``exchange(config) -> QueryResult`` (in :mod:`dnstfo.client.query`) is the whole API; the
report and its verdict live in :mod:`dnstfo.client.report` and :mod:`dnstfo.client.verdict`,
the baseline-versus-TFO comparison in :mod:`dnstfo.client.compare`.
"""

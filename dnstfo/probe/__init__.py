"""``dnstfo probe``: does TCP Fast Open work end to end, for many servers at once.

plan.py (the connections per target, as data), observe.py (what each connection showed),
classify.py (PURE: observations -> verdict and PATHspider's conditions), records.py (the
ndjson records), targets.py (what to probe), run.py (many targets on one event loop).
"""

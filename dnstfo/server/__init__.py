"""The DNS server: asyncio TCP (with a TFO listener) and UDP transports over ``answer/``.

``run.run(config)`` is the entry point; ``app.DnsServer`` is the server inside an event loop.
"""

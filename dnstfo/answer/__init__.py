"""Answers DNS queries from our zones, without I/O (SANS-I/O).

Never imports ``socket``, ``asyncio`` or ``dnstfo.kernel``: the server hands bytes in and
sends the bytes it gets back.
"""

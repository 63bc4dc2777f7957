"""Sans-I/O DNS over TCP: bytes in, whole messages out. Never imports socket or asyncio."""

"""dnstfo: DNS over TCP with TCP Fast Open (RFC 7413).

A server, a dig-like client, a deployment probe and a network lab that shows on a
real Linux kernel what TFO does to a DNS query: one round trip instead of two.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

"""Linux TCP Fast Open, nothing about DNS: sockets, TCP_INFO, tcp_metrics, sysctls.

Everything here acts on the calling process's network namespace.
"""

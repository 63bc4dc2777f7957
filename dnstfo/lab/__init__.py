"""The network lab: namespaces, TUN devices and a delay line with middlebox faults.

Privileged (root and ``/dev/net/tun``); imported only by ``cli/``, the tests and benchmarks.
"""

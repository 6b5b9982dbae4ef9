"""The forwarder: mirrors the manager's MFEs into the kernel's multicast forwarding cache.

`mroute` is the kernel API, `mirror` the bookkeeping shared by the Linux
forwarder (`linux`) and the simulated one (`sim`).
"""

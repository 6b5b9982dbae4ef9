"""The IGMP proxy routing protocol (RFC 4605): one upstream interface, several downstream ones, like igmpproxy.

`merge` decides what to join upstream and where to forward (no I/O),
`settings` checks the ``[plugins.proxy]`` table, `upstream` holds the
kernel membership sockets, and `plugin` is what the host loads (entry
point ``proxy``).
"""

"""IGMP, the router side of RFC 2236 (v2) and RFC 3376 (v3): hosts' reports become MGM memberships.

`packet` parses and builds the messages (no I/O), `router` is the
per-interface state machine (no I/O, time passed in), `rawsocket` is the
raw IGMP socket, and `plugin` is the plugin the host loads (entry point
``igmp``).
"""

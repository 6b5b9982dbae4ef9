"""The static routing protocol: multicast routes from the configuration, like smcroute's ``mroute`` lines.

`routes` holds the parsing, checking, lookup and reload diff (no I/O);
`plugin` is the plugin the host loads (entry point ``static``).
"""

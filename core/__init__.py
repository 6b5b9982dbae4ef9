"""mgm.core: the MGM's rules, free of I/O (state, args, mfe, sortedview, types).

Its subpackages are the processes and tools around them: `manager` (mgmd), `cli` (the `mgm` command) and
`runtime` (configuration, logs, keys).  docs/architecture.md gives the import rules; tests/test_layout.py
checks them.
"""

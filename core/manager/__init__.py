"""mgm.core.manager: the manager process (mgmd) around the rules of mgm.core: the bus loop, metrics and the
access list."""

"""mgm.core.manager: the manager process (mgmd) around the rules of mgm.core: the bus loop, the kernel
route resolver, metrics and the access list."""

"""mgm.core: the MGM state machine (sans-I/O) and the manager process, mgmd."""

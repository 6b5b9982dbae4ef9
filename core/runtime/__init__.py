"""mgm.core.runtime: the plumbing every mgmbus process may use: the configuration loader, logging set-up, the
choice of CURVE keys, and the kernel's unicast routes.  It imports only mgm.bus and the rules' types."""

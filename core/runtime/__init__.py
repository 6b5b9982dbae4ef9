"""mgm.core.runtime: what every mgmbus process uses at start: the configuration loader, logging set-up and
the choice of CURVE keys.  Plugins and the host import it; it imports only mgm.bus and the rules' types."""

"""Which CURVE keys a process uses: the default key folder, and a client's choice of keys.

`client_curve` decides a client's CURVE settings (mgm plugin, show, monitor, up):
the command line's --curve-key/--server-key, else the configuration's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mgm.core.runtime.config import Config, PluginConfig

if TYPE_CHECKING:
    from mgm.bus.sockets import Curve


def default_dir() -> Path:
    """/etc/mgm/keys for root, else ~/.config/mgm/keys (XDG_CONFIG_HOME)."""
    if os.geteuid() == 0:
        return Path("/etc/mgm/keys")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mgm" / "keys"


def client_curve(args: argparse.Namespace, config: Config | None = None,
                 plugin: PluginConfig | None = None) -> Curve | None:
    """A client's CURVE settings, or None where neither the command line nor the configuration names keys.

    Our key pair: --curve-key, else the plugin's `curve_key`, else [manager]
    curve_client_key.  The manager's public key: --server-key, else [manager]
    curve_server_public_key.  One without the other is a mistake (ValueError).
    They are applied to tcp endpoints only.
    """
    from mgm.bus.auth import client_curve as make
    from mgm.bus.auth import parse_public_key

    manager = config.manager if config is not None else None
    key_file: Path | None = getattr(args, "curve_key", None)
    if key_file is None and plugin is not None:
        key_file = plugin.curve_key
    if key_file is None and manager is not None:
        key_file = manager.curve_client_key
    server_arg: str | None = getattr(args, "server_key", None)
    server_key = parse_public_key(server_arg, "--server-key") if server_arg is not None else None
    if server_key is None and manager is not None:
        server_key = manager.curve_server_public_key
    if key_file is None and server_key is None:
        return None
    if key_file is None:
        raise ValueError("the manager's public key is given but not our key pair: give --curve-key FILE, "
                         "curve_key in [plugins.NAME] or [manager] curve_client_key")
    if server_key is None:
        raise ValueError("our key pair is given but not the manager's public key: give --server-key KEY "
                         "or [manager] curve_server_public_key")
    return make(key_file, server_key)

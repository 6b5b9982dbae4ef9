"""`mgm keys`: CURVE key pairs for tcp endpoints, and the client side's choice of keys.

    mgm keys generate NAME [--dir DIR]   writes NAME.key (public) and NAME.key_secret (0600), never over a key
    mgm keys list [--dir DIR]            one line per NAME.key: the name and its z85 public key

The z85 public key that `list` prints is what the configuration takes
(`public_key` of a [[manager.clients]] entry, `curve_server_public_key`).
The default folder is /etc/mgm/keys for root, else ~/.config/mgm/keys.

`client_curve` decides a client's CURVE settings (mgm plugin, show, monitor):
the command line's --curve-key/--server-key, else the configuration's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mgm.core.config import Config, PluginConfig

if TYPE_CHECKING:
    from mgm.bus.sockets import Curve


def default_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/mgm/keys")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mgm" / "keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="write a new key pair NAME.key and NAME.key_secret")
    gen.add_argument("name", help="the key's name (letters, digits, '_' and '-'), e.g. the plugin or host")
    lst = sub.add_parser("list", help="print the name and z85 public key of every NAME.key")
    for p in (gen, lst):
        p.add_argument("--dir", type=Path, default=None, help=f"key folder (default {default_dir()})")


def run(args: argparse.Namespace) -> int:
    from mgm.bus.auth import generate, list_keys
    from mgm.core.config import _NAME

    directory: Path = args.dir or default_dir()
    if args.keys_command == "generate":
        if not _NAME.match(args.name):
            print(f"mgm keys: {args.name!r} is not a key name (letters, digits, '_' and '-')", file=sys.stderr)
            return 2
        try:
            public, secret = generate(directory, args.name)
        except (OSError, ValueError) as exc:
            print(f"mgm keys: {exc}", file=sys.stderr)
            return 1
        print(f"{args.name} {list_keys_one(public)}")
        print(f"wrote {public} (public) and {secret} (secret, mode 600)", file=sys.stderr)
        return 0
    if not directory.is_dir():
        print(f"mgm keys: no key folder {directory}", file=sys.stderr)
        return 1
    try:
        keys = list_keys(directory)
    except ValueError as exc:
        print(f"mgm keys: {exc}", file=sys.stderr)
        return 1
    for name, public_key, has_secret in keys:
        print(f"{name} {public_key.decode('ascii')}{'' if has_secret else '  (public only)'}")
    return 0


def list_keys_one(public_file: Path) -> str:
    from mgm.bus.auth import load_public_key

    return load_public_key(public_file).decode("ascii")


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

"""`mgm keys`: CURVE key pairs for tcp endpoints.

    mgm keys generate NAME [--dir DIR]   writes NAME.key (public) and NAME.key_secret (0600), never over a key
    mgm keys list [--dir DIR]            one line per NAME.key: the name and its z85 public key

The z85 public key that `list` prints is what the configuration takes
(`public_key` of a [[manager.clients]] entry, `curve_server_public_key`).
The default folder is /etc/mgm/keys for root, else ~/.config/mgm/keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mgm.core.runtime.keys import default_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="write a new key pair NAME.key and NAME.key_secret")
    gen.add_argument("name", help="the key's name (letters, digits, '_' and '-'), e.g. the plugin or host")
    lst = sub.add_parser("list", help="print the name and z85 public key of every NAME.key")
    for p in (gen, lst):
        p.add_argument("--dir", type=Path, default=None, help=f"key folder (default {default_dir()})")


def run(args: argparse.Namespace) -> int:
    from mgm.bus.auth import generate, list_keys, load_public_key
    from mgm.core.runtime.config import _NAME

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
        print(f"{args.name} {load_public_key(public).decode('ascii')}")
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

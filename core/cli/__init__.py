"""The `mgm` command: one parser, one subcommand per process or tool.

Each subcommand's module is imported only when it runs (for its options
too: `build_parser(only=...)`), so `mgm manager` never loads the plugin
machinery and `mgm show` never loads the state machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from mgm.bus.endpoints import default_api, default_events

# subcommand -> (module with `run(args) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "manager": ("mgm.core.manager.mgmd", "run the manager (mgmd) in the foreground"),
    "plugin": ("mgm.plugins.host", "run one plugin in the foreground"),
    "up": ("mgm.plugins.supervisor", "run the manager and the configured plugins"),
    "show": ("mgm.core.cli.show", "print the manager's protocols, interfaces, groups or MFEs"),
    "monitor": ("mgm.core.cli.monitor", "watch the live bus: events, gaps, resyncs and rates"),
    "keys": ("mgm.core.cli.keys", "generate and list CURVE key pairs for tcp endpoints"),
}
OFF_THE_BUS = frozenset({"keys"})
"""Subcommands that neither join the bus nor log: no endpoint, key or log options."""


def _endpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=None, help=f"request endpoint (default {default_api()})")
    parser.add_argument("--events", default=None, help=f"event endpoint (default {default_events()})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="stderr lines as text, or one JSON object each (ts, level, logger, msg, fields)")
    parser.add_argument("--curve-key", type=Path, default=None, metavar="FILE",
                        help="our CURVE key pair for tcp endpoints (a NAME.key_secret file from `mgm keys`); "
                             "for the manager its own, for clients theirs (default: from --config)")
    parser.add_argument("--server-key", default=None, metavar="KEY",
                        help="the manager's CURVE public key for tcp endpoints: z85 text, or a NAME.key file "
                             "(default: [manager] curve_server_public_key from --config)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; with `only`, the options of that one alone, whose module is then the only one imported."""
    parser = argparse.ArgumentParser(prog="mgm", description="mgmbus: a multicast group manager on a ZeroMQ bus")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name not in OFF_THE_BUS:
            _endpoint_options(p)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # `mgm` itself has no option but -h
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if args.command not in OFF_THE_BUS:
        args.api = args.api or default_api()
        args.events = args.events or default_events()
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

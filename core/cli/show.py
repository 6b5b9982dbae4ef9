"""`mgm show protocols|interfaces|groups|mfes|pim`: the manager's tables, for people and scripts.

Where the rows come from (no handle needed, so `show` never registers a
protocol and never appears on the bus itself):

* protocols, interfaces and groups (the memberships) come from one `sync` of
  the ``state`` stream: the manager freezes the snapshot at the first page and
  pages it, so the three tables are one consistent picture at one seq.
* mfes come from `list_mfes`, page by page (``after`` the last entry,
  ``--page-size`` entries per request), which is also the only source of the
  counters (``--stats``).  Pages are not one atomic picture: an MFE created
  or deleted between two pages may be missing or listed.
* pim is the status the pim plugin last gave the manager (`set_protocol_status`,
  at most once a second after a change), fetched with `get_protocol_status`
  for every registered protocol named ``pim``: its interfaces, neighbours, RP
  map, upstream and downstream join state and packet counters.  Its times
  are counted from when the plugin sent it, less the status's age.

``--json`` prints one JSON document, ``{"table", "epoch", "seq"?, "entries"}``
(``seq`` for the tables taken from the state snapshot), with each entry exactly
as the wire carries it; the text tables add derived columns (interface names,
ages, counts).  A manager that does not answer is one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table

from mgm.bus.client import Client
from mgm.bus.sockets import Curve
from mgm.bus.status import MgmError, Status
from mgm.bus.topics import STATE
from mgm.core.types import ANY, FORWARDER_PROTOCOL_ID, IGMP_PROTOCOL_ID

TABLES = ("protocols", "interfaces", "groups", "mfes", "pim")
DEFAULT_TIMEOUT = 5.0
DEFAULT_PAGE = 500


class Unreachable(Exception):
    """No manager answers on the api endpoint: the one line the user sees."""


class ToolError(Exception):
    """Anything else that ends a tool with exit status 1 and one line (a refusal, a timeout)."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="configuration file to take the manager's endpoints ([manager] api, events) and, for "
                             "tcp, the CURVE keys (curve_client_key, curve_server_public_key) from; the command line "
                             "wins (default: none)")  # fmt: skip


def tool_connection(args: argparse.Namespace) -> tuple[str, str, Curve | None]:
    """(api, events, CURVE keys): the command line's, else --config's (as `mgm plugin` takes them)."""
    from mgm.core.runtime.config import ConfigError, effective_manager, load
    from mgm.core.runtime.keys import client_curve

    api, events, config = args.api, args.events, None
    try:
        if args.config is not None:
            config = load(args.config)
            settings = effective_manager(config, api, events, args.log_level)
            api, events = str(settings.api), str(settings.events)
        return api, events, client_curve(args, config)
    except (ConfigError, ValueError) as exc:
        raise ToolError(str(exc)) from None


def unreachable_message(api: str) -> str:
    if api.startswith("tcp://"):  # a refused CURVE handshake looks exactly like silence
        return (f"no manager answers on {api}: is `mgm up` (or `mgm manager`) running, and is our key (--curve-key) "
                "in its allow-list and --server-key its public key?")
    return f"no manager answers on {api}: is `mgm up` (or `mgm manager`) running?"


class _NotYetLost(logging.Filter):
    """Until `start()` returns, the Client counts the time since the epoch of its clock as heartbeat silence
    and warns that the manager is lost; that is the unreachable case, which the tool reports itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("no heartbeat from the manager")


async def start_client(client: Client) -> None:
    """`client.start()`, with the one-line explanation (Unreachable) when nobody answers."""
    if client.api.startswith("ipc://"):
        path = client.api[len("ipc://"):]
        if not os.path.exists(path):  # nothing can answer: say so now instead of after the timeout
            raise Unreachable(f"{unreachable_message(client.api)} (there is no socket {path})")
    client_log = logging.getLogger(Client.__module__)
    quiet = _NotYetLost()
    client_log.addFilter(quiet)
    try:
        await client.start()
    except TimeoutError:
        raise Unreachable(unreachable_message(client.api)) from None
    finally:
        client_log.removeFilter(quiet)


def tool_logging(log_level: str, log_format: str = "text") -> None:
    """Tools print what they found; the library's info lines only with --log-level debug."""
    from mgm.core.runtime.logs import setup

    setup(log_level if log_level in ("debug", "error") else "warning", log_format)


def add_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up on a silent manager after this long (default {DEFAULT_TIMEOUT:g})")


def check_timeout(parser: argparse.ArgumentParser, timeout: float) -> None:
    if not timeout >= 0.1:
        parser.error(f"--timeout must be at least 0.1 s, not {timeout}")


# --- rendering helpers (monitor uses them too) --------------------------------------------------

@functools.cache
def if_name(if_index: int) -> str | None:
    """The kernel's name for an index on this machine, if there is one (cached)."""
    try:
        return socket.if_indextoname(if_index) if if_index > 0 else None
    except (OSError, OverflowError):
        return None


def iface_label(if_index: Any, next_hop: Any = ANY) -> str:
    """``2(eth0)``, ``2`` when the index is not on this machine, ``@next_hop`` when it is not 0.0.0.0."""
    label = str(if_index)
    if type(if_index) is int and (name := if_name(if_index)) is not None:
        label += f"({name})"
    if next_hop not in (ANY, None):
        label += f"@{next_hop}"
    return label


def addr_or_star(addr: Any, mask: Any = None) -> str:
    """A wildcard (0.0.0.0 with mask 0.0.0.0, or no mask given) prints as ``*``."""
    return "*" if addr == ANY and mask in (ANY, None) else str(addr)


def duration(seconds: float) -> str:
    """A compact age: 42s, 3m07s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _addr_key(addr: Any) -> int:
    try:
        return int.from_bytes(socket.inet_aton(str(addr)), "big")
    except OSError:
        return -1


def _proto_key(entry: dict[str, Any]) -> tuple[int, int]:
    return int(entry.get("protocol_id", 0)), int(entry.get("component_id", 0))


# --- fetching -------------------------------------------------------------------------------------


async def fetch_mfes(client: Client, page_size: int, stats: bool) -> list[dict[str, Any]]:
    """Every MFE in (group, source) order, `page_size` per `list_mfes` request."""
    entries: list[dict[str, Any]] = []
    args: dict[str, Any] = {"max_entries": page_size}
    if stats:
        args["stats"] = 1
    while True:
        page = await client.request("list_mfes", args)
        got: list[dict[str, Any]] = page.get("entries") or []
        entries.extend(got)
        if not page.get("more") or not got:
            return entries
        last = got[-1]
        args["after"] = {"source": last["source"], "group": last["group"]}


# --- tables -----------------------------------------------------------------------------------------


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=True)
    return table


def _protocol_names(state: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {_proto_key(p): str(p.get("name") or "") for p in state.get("protocols", [])}


def _protocol_label(pid: Any, cid: Any, names: dict[tuple[int, int], str]) -> str:
    name = names.get((int(pid), int(cid)), "")
    return f"{pid}/{cid}" + (f" {name}" if name else "")


def protocols_table(state: dict[str, Any]) -> tuple[Table, list[dict[str, Any]], str]:
    members = Counter(_proto_key(m) for m in state.get("memberships", []))
    owned = Counter(_proto_key(i["owner"]) for i in state.get("interfaces", []) if i.get("owner"))
    entries = sorted(state.get("protocols", []), key=_proto_key)
    table = _table("PROTOCOL", "COMPONENT", "NAME", "OWNS", "MEMBERSHIPS", "ANSWERS")
    for p in entries:
        key = _proto_key(p)
        label = str(key[0]) + (" (igmp)" if key[0] == IGMP_PROTOCOL_ID else "")
        answers = ",".join(map(str, p.get("questions") or [])) or "-"  # the questions the manager asks it
        table.add_row(label, str(key[1]), str(p.get("name") or "-"), str(owned.get(key, 0)), str(members.get(key, 0)),
                      answers)  # fmt: skip
    return table, entries, f"{len(entries)} protocol(s)"


def interfaces_table(state: dict[str, Any]) -> tuple[Table, list[dict[str, Any]], str]:
    names = _protocol_names(state)
    members = Counter((m.get("if_index"), m.get("next_hop")) for m in state.get("memberships", []))
    mfes = state.get("mfes", [])
    mfes_in = Counter((mfe.get("in_if_index"), mfe.get("in_next_hop")) for mfe in mfes)
    mfes_out = Counter((o.get("if_index"), o.get("next_hop")) for mfe in mfes for o in mfe.get("oil", []))
    entries = list(state.get("interfaces", []))
    table = _table("INTERFACE", "OWNER", "IGMP", "MEMBERSHIPS", "MFES IN", "MFES OUT", "BOUNDARIES")
    for i in entries:
        k = (i.get("if_index"), i.get("next_hop"))
        owner = i.get("owner")
        table.add_row(
            iface_label(i.get("if_index"), i.get("next_hop")),
            _protocol_label(owner["protocol_id"], owner["component_id"], names) if owner else "-",
            "yes" if i.get("igmp") else "no",
            str(members.get(k, 0)),
            str(mfes_in.get(k, 0)),
            str(mfes_out.get(k, 0)),
            _boundaries_text(i.get("boundaries") or []),
        )
    return table, entries, f"{len(entries)} interface(s); {forwarding(state)}"


def forwarding(state: dict[str, Any]) -> str:
    """Who forwards, as the forwarder registered itself: its backend ("forwarder (nft)"), or that nothing does."""
    names = [str(p.get("name") or "forwarder") for p in state.get("protocols", [])
             if int(p.get("protocol_id", -1)) == FORWARDER_PROTOCOL_ID]  # fmt: skip
    if not names:
        return "no forwarder is registered: nothing is forwarded"
    if any("simulated" in name for name in names):
        return f"{', '.join(names)}: SIMULATED, nothing is really forwarded"
    return f"forwarded by {', '.join(names)}"


def _boundaries_text(boundaries: list[dict[str, Any]]) -> str:
    """The group ranges kept off an interface, as prefixes (the first two and a count past that; --json has all)."""
    prefixes = []
    for b in boundaries:
        try:
            prefixes.append(str(ipaddress.IPv4Network(f"{b['group']}/{b['group_mask']}")))
        except (KeyError, ValueError):
            prefixes.append("?")
    if len(prefixes) > 2:
        return f"{','.join(prefixes[:2])},+{len(prefixes) - 2}"
    return ",".join(prefixes) or "-"


def _membership_order(m: dict[str, Any]) -> tuple[int, ...]:
    return (_addr_key(m.get("group")), _addr_key(m.get("source")), int(m.get("if_index", 0)),
            _addr_key(m.get("next_hop")), *_proto_key(m))  # fmt: skip


def groups_table(state: dict[str, Any]) -> tuple[Table, list[dict[str, Any]], str]:
    names = _protocol_names(state)
    entries = sorted(state.get("memberships", []), key=_membership_order)
    table = _table("GROUP", "SOURCE", "INTERFACE", "PROTOCOL")
    for m in entries:
        table.add_row(
            addr_or_star(m.get("group"), m.get("group_mask")),
            addr_or_star(m.get("source"), m.get("source_mask")),
            iface_label(m.get("if_index"), m.get("next_hop")),
            _protocol_label(m.get("protocol_id", 0), m.get("component_id", 0), names),
        )
    return table, entries, f"{len(entries)} membership(s)"


def _oil_cell(oil: Iterable[dict[str, Any]], stats: bool) -> str:
    parts = []
    for o in oil:
        part = iface_label(o.get("if_index"), o.get("next_hop"))
        if stats:
            part += f":{o.get('out_packets', 0)}"
            if o.get("discards"):
                part += f"/{o['discards']}d"
        parts.append(part)
    return " ".join(parts) or "-"


def mfes_table(entries: list[dict[str, Any]], stats: bool, now: float) -> tuple[Table, list[dict[str, Any]], str]:
    columns = ["SOURCE", "GROUP", "IIF", "UPSTREAM", "PROTO", "OIL", "AGE", "EXPIRES"]
    if stats:
        columns += ["PACKETS", "BYTES", "WRONG-IF"]
    table = _table(*columns)
    for mfe in entries:
        proto = mfe.get("in_protocol_id")
        row = [
            str(mfe.get("source")),
            str(mfe.get("group")),
            iface_label(mfe.get("in_if_index"), mfe.get("in_next_hop")),
            str(mfe.get("upstream_neighbor")),
            str(proto) if proto else "-",
            _oil_cell(mfe.get("oil", []), stats),
            duration(now - float(mfe.get("created", now))),
            duration(float(mfe.get("expires", now)) - now),
        ]
        if stats:
            row += [str(mfe.get("in_packets", 0)), str(mfe.get("in_bytes", 0)), str(mfe.get("wrong_if_packets", 0))]
        table.add_row(*row)
    suffix = " (OIL entries as interface:out_packets)" if stats and entries else ""
    return table, entries, f"{len(entries)} MFE(s){suffix}"


async def fetch_statuses(client: Client, name: str) -> tuple[int, list[dict[str, Any]]]:
    """(epoch, the status of every registered protocol called `name`, with its id and age)."""
    _, epoch, state = await client.fetch_snapshot(STATE)
    found = []
    for p in sorted(state.get("protocols", []), key=_proto_key):
        if p.get("name") != name:
            continue
        ident = {"protocol_id": p["protocol_id"], "component_id": p["component_id"]}
        try:
            reply = await client.request("get_protocol_status", ident)
        except MgmError as exc:
            if exc.status != Status.ERROR_NOT_FOUND:  # gone since the snapshot, or no status set yet
                raise
            continue
        found.append({**ident, "name": name, "age": reply["age"], "status": reply["status"]})
    return epoch, found


def _seconds(value: Any, age: float) -> str:
    return "never" if value is None else duration(max(0.0, float(value) - age))


def pim_tables(entries: list[dict[str, Any]]) -> tuple[RenderableType, str]:
    """Each pim instance's interfaces, neighbours, RP map and join state, as tables one after another."""
    parts: list[RenderableType] = []
    footers = []
    for entry in entries:
        status, age = entry["status"], float(entry["age"])
        interfaces = _table("INTERFACE", "ADDRESS", "DR", "DR PRIORITY", "GENERATION ID", "NEIGHBOURS")
        for i in status.get("interfaces", []):
            interfaces.add_row(str(i["interface"]), str(i["address"]), str(i["dr"]), str(i["dr_priority"]),
                               str(i["generation_id"]), str(i["neighbors"]))  # fmt: skip
        neighbors = _table("INTERFACE", "NEIGHBOUR", "DR PRIORITY", "GENERATION ID", "UP", "EXPIRES")
        for n in status.get("neighbors", []):
            neighbors.add_row(str(n["interface"]), str(n["address"]), str(n["dr_priority"]),
                              str(n["generation_id"]), duration(float(n["up_for"]) + age),
                              _seconds(n["expires_in"], age))  # fmt: skip
        rps = _table("GROUPS", "RP")
        for r in status.get("rp", []):
            rps.add_row(str(r["groups"]), str(r["rp"]))
        upstream = _table("SOURCE", "GROUP", "TOWARDS", "INTERFACE", "NEIGHBOUR", "WHY", "NEXT JOIN", "RPT")
        for u in status.get("upstream", []):
            upstream.add_row(str(u["source"]), str(u["group"]), str(u["towards"] or "-"), str(u["interface"] or "-"),
                             str(u["neighbor"] or "- (no RPF neighbour)"), ",".join(u["why"]),
                             _seconds(u["next_join_in"], age), "pruned" if u["rpt_pruned"] else "-")  # fmt: skip
        downstream = _table("INTERFACE", "SOURCE", "GROUP", "STATE", "EXPIRES")
        for d in status.get("downstream", []):
            downstream.add_row(str(d["interface"]), str(d["source"]), str(d["group"]), str(d["state"]),
                               _seconds(d["expires_in"], age))  # fmt: skip
        registers = _table("SOURCE", "GROUP", "RP", "INTERFACE", "STATE", "TIMER", "REGISTER-STOPS")
        for r in status.get("registers", []):
            registers.add_row(str(r["source"]), str(r["group"]), str(r["rp"]), str(r["interface"]), str(r["state"]),
                              _seconds(r["timer_in"], age), str(r["register_stops"]))  # fmt: skip
        asserts = _table("SOURCE", "GROUP", "INTERFACE", "STATE", "WINNER", "TIMER")
        for a in status.get("asserts", []):
            asserts.add_row(str(a["source"]), str(a["group"]), str(a["interface"]), str(a["state"]), str(a["winner"]),
                            _seconds(a["timer_in"], age))  # fmt: skip
        label = f"{entry['name']} {entry['protocol_id']}/{entry['component_id']}"
        for title, table in (("interfaces", interfaces), ("neighbours", neighbors), ("RP map", rps),
                             ("upstream join state", upstream), ("downstream join state", downstream),
                             ("register state (as the sources' DR)", registers),
                             ("Assert state", asserts)):  # fmt: skip
            table.title, table.title_justify = f"{label}: {title}", "left"
            parts.append(table)
        counters = " ".join(f"{k}={v}" for k, v in sorted(status.get("counters", {}).items())) or "none"
        footers.append(f"{label}: status {age:.1f} s old; counters: {counters}")
    return Group(*parts), "\n".join(footers)


StateTable = Callable[[dict[str, Any]], tuple[Table, list[dict[str, Any]], str]]
STATE_TABLES: dict[str, StateTable] = {
    "protocols": protocols_table,
    "interfaces": interfaces_table,
    "groups": groups_table,
}


def console() -> Console:
    """A terminal gets its width (rich folds to it); a pipe or file gets whole lines, without colour."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=100_000, no_color=True, highlight=False, soft_wrap=False)


# --- the command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", choices=TABLES, help="which table")
    parser.add_argument("--stats", action="store_true",
                        help="mfes: packets, bytes and wrong-interface packets, and out packets per OIL entry")
    parser.add_argument("--json", action="store_true",
                        help='one JSON document {"table", "epoch", "seq"?, "entries"} with entries as on the wire')
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE, metavar="N",
                        help=f"mfes: entries per list_mfes request (default {DEFAULT_PAGE})")
    add_timeout_option(parser)
    add_config_option(parser)
    parser.set_defaults(_parser=parser)


async def _show(args: argparse.Namespace) -> tuple[dict[str, Any], RenderableType, str]:
    api, events, curve = tool_connection(args)
    client = Client(api, events, connect_timeout=args.timeout, request_timeout=args.timeout, curve=curve)
    await start_client(client)
    try:
        if args.table == "pim":
            epoch, statuses = await fetch_statuses(client, "pim")
            if not statuses:
                raise ToolError("no pim plugin has told the manager its status: is `pim` in [plugins] and running?")
            tables, footer = pim_tables(statuses)
            return {"table": "pim", "epoch": epoch, "entries": statuses}, tables, footer
        if args.table == "mfes":
            entries = await fetch_mfes(client, args.page_size, args.stats)
            table, entries, footer = mfes_table(entries, args.stats, time.time())
            return {"table": "mfes", "epoch": client.epoch, "entries": entries}, table, footer
        seq, epoch, state = await client.fetch_snapshot(STATE)  # all pages of one frozen snapshot
        table, entries, footer = STATE_TABLES[args.table](state)
        return {"table": args.table, "epoch": epoch, "seq": seq, "entries": entries}, table, footer
    except MgmError as exc:
        raise ToolError(f"the manager on {client.api} refused: {exc}") from None
    except TimeoutError as exc:
        raise ToolError(str(exc)) from None
    finally:
        await client.close()


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    check_timeout(parser, args.timeout)
    tool_logging(args.log_level, args.log_format)
    if args.stats and args.table != "mfes":
        parser.error("--stats applies to `mgm show mfes` only (the manager keeps no counters for the other tables)")
    if args.page_size < 1:
        parser.error(f"--page-size must be at least 1, not {args.page_size}")
    try:
        doc, table, footer = asyncio.run(_show(args))
    except (Unreachable, ToolError) as exc:
        print(f"mgm show: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        if args.json:
            sys.stdout.write(json.dumps(doc) + "\n")
        else:
            out = console()
            out.print(table)
            out.print(footer)
        sys.stdout.flush()
    except BrokenPipeError:  # `mgm show ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

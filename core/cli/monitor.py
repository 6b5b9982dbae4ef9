"""`mgm monitor`: the live bus, one line per event, with the gaps and resyncs it went through.

The monitor is a plain subscriber built on the Client's `follow`: for every
stream under the followed prefixes it syncs on first contact, on a gap and
on a new epoch, and then gets the events after the snapshot in order.  It
sends no request but `ping` and `sync`, so it never holds anything at the
manager; if it stalls (a slow terminal), the manager's XPUB drops events for
it alone and it resyncs when it catches up.

Output, one line each (``--json``: one JSON object per line):

* an event: ``TIME STREAM #SEQ TYPE key fields``; with ``--json`` the event
  map exactly as received.
* a snapshot (``--json``: ``{"monitor": "snapshot", "reason", "stream", "seq",
  "epoch", "state"}``): reason ``first`` when a stream is first met, ``gap``
  or ``epoch`` for a resync.  The text form summarises the state.
* a gap (``{"monitor": "gap", "stream", "epoch", "first", "last"}``): the
  seqs ``first..last`` of that stream were not shown one by one; the snapshot
  that follows covers them.
* ``epoch`` (manager restarted), ``lost`` (no heartbeat for 3 s), a periodic
  ``rate`` line (events per second per stream), and a ``summary`` at the end.

Filters (``--type``, ``--interface``, ``--group``, ``--source``) select the
events shown; gaps, snapshots and the other monitor lines are always shown,
and counts and rates are over every event received.  Objects the monitor
adds have a ``monitor`` key and no ``v``, so a script tells them apart.
``--count N`` ends the monitor (summary, status 0) after N shown events;
SIGINT and SIGTERM end it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from mgm.bus.client import Client
from mgm.core.cli.show import (
    ToolError,
    Unreachable,
    add_config_option,
    add_timeout_option,
    addr_or_star,
    check_timeout,
    iface_label,
    start_client,
    tool_connection,
    tool_logging,
)

DEFAULT_RATE_INTERVAL = 10.0

EVENT_TYPES = frozenset({
    # state stream
    "protocol_registered", "protocol_deregistered", "interface_owned", "interface_released",
    "membership_added", "membership_deleted", "mfe_created", "mfe_updated", "mfe_deleted", "boundaries_set",
    # proto/P/C streams
    "enable_igmp", "disable_igmp", "local_join", "local_leave", "join_alert", "prune_alert",
    "wrong_if", "rpf", "creation_alert",
})  # fmt: skip
"""The event types of protocol v1; another --type is accepted (a newer manager) with a warning."""


# --- filters ----------------------------------------------------------------------------------------


def _interfaces_of(ev: dict[str, Any]) -> set[int]:
    """Every if_index an event names: its own, an MFE's incoming interface and OIL, a creation_alert's OIL."""
    found: set[int] = set()
    for holder in (ev, ev.get("mfe")):
        if not isinstance(holder, dict):
            continue
        for key in ("if_index", "in_if_index"):
            if type(holder.get(key)) is int:
                found.add(holder[key])
        oil = holder.get("oil")
        if isinstance(oil, list):
            found.update(o["if_index"] for o in oil if isinstance(o, dict) and type(o.get("if_index")) is int)
    return found


def _addr_field(ev: dict[str, Any], key: str) -> Any:
    value = ev.get(key)
    if value is None and isinstance(ev.get("mfe"), dict):
        value = ev["mfe"].get(key)
    return value


@dataclass
class Filters:
    """What selects an event for display; empty means everything."""

    types: frozenset[str] = frozenset()
    interfaces: frozenset[int] = frozenset()
    groups: tuple[ipaddress.IPv4Network, ...] = ()
    sources: tuple[ipaddress.IPv4Network, ...] = ()

    def match(self, ev: dict[str, Any]) -> bool:
        if self.types and ev.get("type") not in self.types:
            return False
        if self.interfaces and not (self.interfaces & _interfaces_of(ev)):
            return False
        return _in_any(_addr_field(ev, "group"), self.groups) and _in_any(_addr_field(ev, "source"), self.sources)


def _in_any(value: Any, networks: tuple[ipaddress.IPv4Network, ...]) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv4 address or network: {exc}") from None


def _interface(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return socket.if_nametoindex(text)
    except OSError:
        raise argparse.ArgumentTypeError(f"no interface named {text!r} on this machine (give its if_index)") from None


# --- text rendering ---------------------------------------------------------------------------------


def _clock(now: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def describe(ev: dict[str, Any]) -> str:
    """The key fields of an event, in one short line."""
    parts: list[str] = []
    if "protocol_id" in ev:
        parts.append(f"protocol={ev['protocol_id']}/{ev.get('component_id')}")
    if ev.get("name"):
        parts.append(f"name={ev['name']}")
    mfe = ev.get("mfe")
    if isinstance(mfe, dict):
        parts += [f"source={mfe.get('source')}", f"group={mfe.get('group')}",
                  f"iif={iface_label(mfe.get('in_if_index'), mfe.get('in_next_hop'))}",
                  "oil=" + (",".join(iface_label(o.get("if_index"), o.get("next_hop"))
                                     for o in mfe.get("oil", []) if isinstance(o, dict)) or "-")]  # fmt: skip
        return " ".join(parts)
    if "if_index" in ev:
        parts.append(f"if={iface_label(ev['if_index'], ev.get('next_hop'))}")
    if "in_if_index" in ev:
        parts.append(f"iif={iface_label(ev['in_if_index'], ev.get('in_next_hop'))}")
    if "source" in ev:
        parts.append(f"source={addr_or_star(ev['source'], ev.get('source_mask'))}")
    if "group" in ev:
        parts.append(f"group={addr_or_star(ev['group'], ev.get('group_mask'))}")
    if isinstance(ev.get("oil"), list):
        parts.append("oil=" + (",".join(iface_label(o.get("if_index"), o.get("next_hop"))
                                        for o in ev["oil"] if isinstance(o, dict)) or "-"))  # fmt: skip
    for key in ("member_update", "member_delete", "upstream_neighbor", "question", "deadline"):
        if key in ev:
            parts.append(f"{key}={ev[key]}")
    return " ".join(parts)


def summarise_state(state: dict[str, Any]) -> str:
    """A snapshot in a few words: how many of each list, and the scalars."""
    parts = []
    for key, value in state.items():
        if isinstance(value, list):
            parts.append(f"{len(value)} {key}")
        elif not isinstance(value, dict):
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "empty"


# --- the monitor ----------------------------------------------------------------------------------------


class _Client(Client):
    """A Client that remembers at which seq each stream's last snapshot was taken (for the gap lines)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot_at: dict[str, tuple[int, int]] = {}

    async def fetch_snapshot(self, stream: str) -> tuple[int, int, dict[str, Any]]:
        seq, epoch, state = await super().fetch_snapshot(stream)
        self.snapshot_at[stream] = (seq, epoch)
        return seq, epoch, state


@dataclass
class _Seen:
    epoch: int
    seq: int


@dataclass
class Monitor:
    """Turns the followed streams into output lines and keeps the counts for the rate and summary lines."""

    out: TextIO
    json_mode: bool
    filters: Filters
    count: int | None = None
    client: _Client | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)
    events: int = 0
    shown: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    window: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missed: int = 0
    resyncs: int = 0
    started: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    _flush_scheduled: bool = False

    # --- output -----------------------------------------------------------------------

    def emit(self, record: dict[str, Any], text: str) -> None:
        if self.closed:
            return
        try:
            if self.json_mode:
                self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            else:
                self.out.write(f"{_clock(time.time())} {text}\n")
        except BrokenPipeError:
            self._reader_gone()
            return
        if not self._flush_scheduled:  # one flush per burst of callbacks, not one per line
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        try:
            self.out.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        """`mgm monitor | head`: the reader has what it wanted; stop quietly."""
        self.closed = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
        self.stop.set()

    # --- the Client's callbacks ---------------------------------------------------------

    def on_event(self, ev: dict[str, Any]) -> None:
        stream = str(ev.get("stream"))
        self.events += 1
        self.per_stream[stream] = self.per_stream.get(stream, 0) + 1
        self.window[stream] = self.window.get(stream, 0) + 1
        self.seen[stream] = _Seen(int(ev["epoch"]), int(ev["seq"]))
        if not self.filters.match(ev):
            return
        self.shown += 1
        self.emit(ev, f"{stream} #{ev.get('seq')} {ev.get('type')} {describe(ev)}".rstrip())
        if self.count is not None and self.shown >= self.count:
            self.stop.set()

    def on_snapshot(self, stream: str, state: dict[str, Any]) -> None:
        assert self.client is not None
        seq, epoch = self.client.snapshot_at[stream]
        before = self.seen.get(stream)
        self.seen[stream] = _Seen(epoch, seq)
        if before is None:
            reason = "first"
        elif before.epoch != epoch:
            reason = "epoch"
            self.resyncs += 1
        else:
            reason = "gap"
            self.resyncs += 1
            if seq > before.seq:
                self.gaps += 1
                self.missed += seq - before.seq
                first, last = before.seq + 1, seq
                self.emit({"monitor": "gap", "stream": stream, "epoch": epoch, "first": first, "last": last},
                          f"{stream} GAP seq {first}..{last} not seen ({last - first + 1} event(s)): resync")
        record = {"monitor": "snapshot", "reason": reason, "stream": stream, "seq": seq, "epoch": epoch,
                  "state": state}  # fmt: skip
        word = {"first": "SNAPSHOT", "gap": "RESYNC", "epoch": "RESYNC (new epoch)"}[reason]
        self.emit(record, f"{stream} {word} at seq {seq}: {summarise_state(state)}")

    def on_new_epoch(self, old: int | None, new: int) -> None:
        self.emit({"monitor": "epoch", "old": old, "new": new},
                  f"manager restarted: epoch {old} -> {new}, resyncing every stream")

    def on_manager_lost(self) -> None:
        self.emit({"monitor": "lost"}, "no heartbeat from the manager for 3 s")

    # --- periodic and final lines ---------------------------------------------------------

    def rate(self, interval: float) -> None:
        rates = {s: round(n / interval, 1) for s, n in sorted(self.window.items())}
        self.window = {}
        text = ", ".join(f"{s} {r:g}/s" for s, r in rates.items()) or "no events"
        self.emit({"monitor": "rate", "interval": interval, "rates": rates}, f"RATE over {interval:g} s: {text}")

    def summary(self) -> None:
        elapsed = time.monotonic() - self.started
        record = {"monitor": "summary", "events": self.events, "shown": self.shown, "streams": self.per_stream,
                  "gaps": self.gaps, "missed": self.missed, "resyncs": self.resyncs,
                  "seconds": round(elapsed, 3)}  # fmt: skip
        self.emit(record, f"SUMMARY {self.events} event(s) ({self.shown} shown) on {len(self.per_stream)} stream(s) "
                          f"in {elapsed:.1f} s, {self.gaps} gap(s) ({self.missed} event(s) not seen), "
                          f"{self.resyncs} resync(s)")  # fmt: skip


def _prefixes(topics: list[str] | None) -> list[str]:
    """The topic prefixes to follow, without one that another covers (it would deliver twice)."""
    wanted = sorted(set(topics or [""]))
    return [p for p in wanted if not any(p != q and p.startswith(q) for q in wanted)]


async def _monitor(args: argparse.Namespace, mon: Monitor) -> None:
    api, events, curve = tool_connection(args)
    client = _Client(api, events, connect_timeout=args.timeout, request_timeout=max(args.timeout, 1.0), curve=curve)
    mon.client = client
    for prefix in _prefixes(args.topic):
        client.follow(prefix, mon.on_event, mon.on_snapshot)
    client.on_new_epoch = mon.on_new_epoch
    loop = asyncio.get_running_loop()
    stop = mon.stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start_client(client)
        client.on_manager_lost = mon.on_manager_lost  # not before: see start_client
        if args.rate_interval > 0:
            next_rate = time.monotonic() + args.rate_interval
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), max(0.0, next_rate - time.monotonic()))
                except TimeoutError:
                    mon.rate(args.rate_interval)
                    next_rate += args.rate_interval
        else:
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.close()
    mon.summary()
    mon.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", action="append", metavar="PREFIX",
                        help="follow only streams starting with PREFIX (state, proto/, proto/10/1...); repeatable; "
                             "default every stream")  # fmt: skip
    parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                        help="show only events of this type (membership_added, mfe_created...); repeatable")
    parser.add_argument("--interface", action="append", default=[], type=_interface, metavar="IF",
                        help="show only events naming this interface (if_index or name); repeatable")
    parser.add_argument("--group", action="append", default=[], type=_network, metavar="ADDR[/LEN]",
                        help="show only events whose group is this address or in this network; repeatable")
    parser.add_argument("--source", action="append", default=[], type=_network, metavar="ADDR[/LEN]",
                        help="show only events whose source is this address or in this network; repeatable")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: events as received; monitor lines have a 'monitor' key")
    parser.add_argument("--rate-interval", type=float, default=DEFAULT_RATE_INTERVAL, metavar="SECONDS",
                        help=f"print events/s per stream this often (default {DEFAULT_RATE_INTERVAL:g}; 0: never)")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="stop after showing N events (with the summary), e.g. to wait for one event in a script")
    add_timeout_option(parser)
    add_config_option(parser)
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    check_timeout(parser, args.timeout)
    if args.count is not None and args.count < 1:
        parser.error(f"--count must be at least 1, not {args.count}")
    if args.rate_interval < 0:
        parser.error(f"--rate-interval must be 0 (never) or positive, not {args.rate_interval}")
    for t in args.type:
        if t not in EVENT_TYPES:
            print(f"mgm monitor: warning: {t!r} is not an event type of protocol v1; filtering on it anyway",
                  file=sys.stderr)
    filters = Filters(frozenset(args.type), frozenset(args.interface), tuple(args.group), tuple(args.source))
    tool_logging(args.log_level, args.log_format)
    mon = Monitor(sys.stdout, args.json, filters, args.count)
    try:
        asyncio.run(_monitor(args, mon))
    except (Unreachable, ToolError) as exc:
        print(f"mgm monitor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the loop's own handler was in place
        return 130
    return 0

"""The manager's Prometheus endpoint: `mgm manager --metrics HOST:PORT` (off by default).

Cost on the hot path: mgmd bumps plain ints in `Counts` (one dict update per
request and per event); nothing of prometheus_client runs until a scrape.
At scrape time `MgmCollector` turns those ints into counters and reads the
gauges from the core (`census()`, `mfe_entries()`).  The HTTP server runs
on the manager's own asyncio loop, so a scrape never races a transition; a
scrape costs one pass over the MFEs (ranking them by packets).

Metrics (all prefixed ``mgm_``):

==================================  =======  ==============================================================
name                                type     meaning
==================================  =======  ==============================================================
requests_total{op,status}           counter  replies sent, by op and status name (unknown ops count as
                                             op="other"; malformed payloads refused before their op is
                                             known are not counted)
events_total{type}                  counter  events published, by type (all streams)
clients_removed_total{reason}       counter  clients the manager removed: ``silence`` (no request for
                                             --liveness seconds: heartbeat misses) or ``connection_lost``
syncs_total{stream}                 counter  snapshots served (a `sync` without a cursor: a resync), by
                                             stream kind ``state`` / ``proto`` / ``other``
tcp_refused_total{reason}           counter  tcp refusals (docs/security.md): connections without CURVE
                                             (``bad_handshake``) or with a key not allowed (``unknown_key``),
                                             requests claiming what the key is not given (``access_denied``)
protocols, interfaces, memberships  gauge    registered clients, interfaces with an owner, memberships
mfes, mfes_pending, questions_open  gauge    stored MFEs, MFEs waiting for rpf/creation answers, open questions
mfe_in_packets_total{source,group}  counter  packets of each of the `top` busiest MFEs (default 100)
mfe_in_bytes_total{source,group}    counter  bytes of the same MFEs
mfes_in_packets, mfes_in_bytes,     gauge    sums over every stored MFE (they drop when an MFE is deleted),
mfes_wrong_if_packets                        so the MFEs outside the top are the sum minus the series
mfe_series_limit                    gauge    the `top` bound itself
protocol{protocol,component,name,   gauge    each number in a protocol's status ``metrics`` map
metric}                                      (set_protocol_status): pim's neighbours, join states, packets
==================================  =======  ==============================================================

Cardinality: requests by op (about 20 ops) x status (a handful each),
events by type (about 20), and at most `top` (source, group) pairs per MFE
counter; `--metrics-top-mfes 0` turns the per-MFE series off; a protocol's
metrics map is its author's to keep small (pim's has about 20 entries).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from mgm.bus.status import Status
from mgm.core.args import format_addr
from mgm.core.types import ClientId

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_TOP_MFES = 100
MAX_REQUEST_HEAD = 8192
"""Bytes of an HTTP request head we read before refusing it (a scrape's is a few hundred)."""
READ_TIMEOUT = 5.0


@dataclass(slots=True)
class Counts:
    """What mgmd counts as it goes: plain dicts of ints, read only at scrape time."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    clients_removed: dict[str, int] = field(default_factory=dict)
    syncs: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    """tcp refusals by reason (mgm.bus.server.BusServer.refusals; the CURVE Guard's thread adds to it too)."""


class MfeView(Protocol):
    key: int
    in_packets: int
    in_bytes: int
    wrong_if_packets: int


class CoreView(Protocol):
    """What the collector reads of the core (mgm.core.state.Mgm)."""

    def census(self) -> dict[str, int]: ...
    def mfe_entries(self) -> Iterable[MfeView]: ...
    def protocol_statuses(self) -> Iterable[tuple[ClientId, str, Mapping[str, Any]]]: ...


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return str(code)


class MgmCollector:
    """A prometheus_client collector over `Counts` and the core; see the module's table."""

    def __init__(self, counts: Counts, core: CoreView, top_mfes: int = DEFAULT_TOP_MFES) -> None:
        if top_mfes < 0:
            raise ValueError(f"the number of per-MFE series must be >= 0, not {top_mfes}")
        self.counts = counts
        self.core = core
        self.top_mfes = top_mfes

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.counts
        requests = CounterMetricFamily("mgm_requests", "Replies sent, by op and status", labels=["op", "status"])
        for (op, status), n in sorted(dict(counts.requests).items()):
            requests.add_metric([op, _status_name(status)], n)
        yield requests
        events = CounterMetricFamily("mgm_events", "Events published, by type", labels=["type"])
        for type_, n in sorted(dict(counts.events).items()):
            events.add_metric([type_], n)
        yield events
        for name, text, label, counted, values in (
            ("mgm_clients_removed", "Clients the manager removed: silence (heartbeat misses) or connection_lost",
             "reason", counts.clients_removed, ("silence", "connection_lost")),
            ("mgm_syncs", "Snapshots served (resyncs), by stream kind", "stream", counts.syncs,
             ("state", "proto", "other")),
            ("mgm_tcp_refused", "tcp refusals: bad_handshake and unknown_key connections, access_denied requests",
             "reason", counts.refused, ("bad_handshake", "unknown_key", "access_denied")),
        ):  # fmt: skip
            family = CounterMetricFamily(name, text, labels=[label])
            for value in values:  # every one, also at 0
                family.add_metric([value], counted.get(value, 0))
            yield family

        census = self.core.census()
        for key, name, text in (
            ("protocols", "mgm_protocols", "Registered clients (protocol, component)"),
            ("interfaces", "mgm_interfaces", "Interfaces with an owner"),
            ("memberships", "mgm_memberships", "Group memberships"),
            ("mfes", "mgm_mfes", "Stored MFEs"),
            ("pending_mfes", "mgm_mfes_pending", "MFEs waiting for rpf or creation_alert answers"),
            ("questions", "mgm_questions_open", "Questions waiting for an answer"),
        ):
            yield GaugeMetricFamily(name, text, value=census[key])
        yield from self._mfe_metrics()
        yield self._protocol_metrics()

    def _protocol_metrics(self) -> Metric:
        """The numbers each protocol puts in its status's ``metrics`` map (set_protocol_status)."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("mgm_protocol", "What each protocol's status reports in its metrics map",
                                   labels=["protocol", "component", "name", "metric"])  # fmt: skip
        for cid, name, status in self.core.protocol_statuses():
            metrics = status.get("metrics")
            if not isinstance(metrics, Mapping):
                continue
            for metric, value in sorted(metrics.items()):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([str(cid.protocol_id), str(cid.component_id), name, metric], value)
        return family

    def _mfe_metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        entries = list(self.core.mfe_entries())
        packets = sum(m.in_packets for m in entries)
        octets = sum(m.in_bytes for m in entries)
        wrong = sum(m.wrong_if_packets for m in entries)
        yield GaugeMetricFamily("mgm_mfes_in_packets", "Packets of all stored MFEs", value=packets)
        yield GaugeMetricFamily("mgm_mfes_in_bytes", "Bytes of all stored MFEs", value=octets)
        yield GaugeMetricFamily("mgm_mfes_wrong_if_packets", "Wrong-interface packets of all stored MFEs",
                                value=wrong)  # fmt: skip
        yield GaugeMetricFamily("mgm_mfe_series_limit", "How many MFEs get series of their own", value=self.top_mfes)
        per_packets = CounterMetricFamily(
            "mgm_mfe_in_packets", "Packets of the busiest MFEs (see mgm_mfe_series_limit)", labels=["source", "group"]
        )
        per_bytes = CounterMetricFamily("mgm_mfe_in_bytes", "Bytes of the busiest MFEs", labels=["source", "group"])
        top = heapq.nlargest(self.top_mfes, entries, key=attrgetter("in_packets")) if self.top_mfes else []
        for mfe in sorted(top, key=lambda m: m.key):
            labels = [format_addr(mfe.key & 0xFFFFFFFF), format_addr(mfe.key >> 32)]
            per_packets.add_metric(labels, mfe.in_packets)
            per_bytes.add_metric(labels, mfe.in_bytes)
        yield per_packets
        yield per_bytes


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets: [::1]:9100) -> (host, port); ValueError with the reason otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"metrics address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9101)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {text!r}: port {port!r} is not a number from 0 to 65535")
    return host, int(port)


class MetricsServer:
    """HTTP on the manager's loop: GET /metrics answers the exposition text, anything else 404/405."""

    def __init__(self, collector: MgmCollector) -> None:
        from prometheus_client.registry import CollectorRegistry

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; the address actually bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_HEAD)
        sockname: Any = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, body, ctype = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3:
            return "400 Bad Request", b"bad request line\n", "text/plain"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in ("/metrics", "/"):
            return "404 Not Found", b"metrics are at /metrics\n", "text/plain"
        if method != "GET":
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        try:
            body = generate_latest(self.registry)
        except Exception:
            log.exception("metrics scrape failed")
            return "500 Internal Server Error", b"scrape failed; see the manager's log\n", "text/plain"
        return "200 OK", body, CONTENT_TYPE_LATEST

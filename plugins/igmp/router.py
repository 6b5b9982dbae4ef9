"""The router side of IGMP on one interface, as a state machine without I/O.

Time is passed in (seconds, any monotonic origin); nothing here reads a
clock, opens a socket or logs what it has not decided.  The plugin feeds it
received IGMP payloads (`Router.receive`) and wakes it at `next_deadline`
(`Router.tick`); it collects the queries to send (`take_packets`) and the
membership changes for the MGM (`take_changes`).

What it implements (RFC 3376, with RFC 2236 as its compatibility mode):

* Querier election: every router starts as querier and sends
  ``startup_query_count`` general queries ``startup_query_interval`` apart,
  then one every ``query_interval``.  A query from a lower address makes it
  a non-querier until the other-querier-present timer runs out.  A
  non-querier adopts the querier's QRV and QQI (RFC 3376 4.1.6/4.1.7) and
  goes back to its own values when it is querier again.
* Per group: filter mode, group timer, source records with their timers,
  and the tables of RFC 3376 section 6.4 for current-state and
  state-change records; group-specific and group-and-source-specific
  queries with their retransmissions and the "suppress router-side
  processing" flag (section 6.6.3); timer lowering on received queries
  (section 6.6.1).
* Older hosts (section 7.3.2): a v1 or v2 report is IS_EX({}) and starts
  that version's older-host-present timer; while it runs BLOCK records are
  ignored and TO_EX(x) counts as TO_EX({}); in v1 mode v2 leaves are
  ignored.  A v2 leave is TO_IN({}).
* ``version = 2`` (RFC 2236 router): v2 queries, v3 reports ignored (a v2
  router does not know them); reports and leaves take the same paths, which
  is exactly RFC 2236's last-member behaviour.
* What may not change state (each drop counted by reason in `Counters`):
  messages with an IP TTL other than 1, v3 reports without Router Alert,
  reports and leaves from outside the interface's subnets
  (``require_local_source``), and, for groups in ``ssm_range`` (RFC 4604
  2.2.1), every any-source join or leave: v1/v2 reports, v2 leaves, IS_EX
  and TO_EX records.  The caller passes the IP header's TTL and Router
  Alert flag to `Router.receive`.

Membership for the MGM: a group in EXCLUDE mode is one (*,G) membership; a
group in INCLUDE mode is one (S,G) membership per source.  **Limitation:**
the MGM has no "all sources but these" membership, so the excluded sources
of an EXCLUDE group are forwarded too (the hosts' own filters still drop
them; only the link carries them).  Link-local groups (224.0.0.0/24) are
never tracked, so never become memberships.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import logging
import math
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from mgm.core.runtime.config import multicast_prefix
from mgm.core.types import ANY, Interface
from mgm.plugins.igmp import packet
from mgm.plugins.igmp.packet import (
    ALLOW_NEW_SOURCES,
    BLOCK_OLD_SOURCES,
    CHANGE_TO_EXCLUDE_MODE,
    CHANGE_TO_INCLUDE_MODE,
    MAX_CODE_VALUE,
    MODE_IS_EXCLUDE,
    MODE_IS_INCLUDE,
    Leave,
    MalformedPacket,
    Query,
    Report,
    Unknown,
    V3Report,
)

log = logging.getLogger(__name__)

INCLUDE = "include"
EXCLUDE = "exclude"
STOPPED = -math.inf
"""A source timer that is not running: in EXCLUDE mode, a source in the exclude list (the RFC's "timer = 0")."""

MAX_SOURCES_PER_QUERY = 366
"""Sources that fit one query in a 1500-octet frame (IP header with Router Alert: 24; query header: 12)."""
MAX_V2_TENTHS = 0xFF
DEFAULT_SSM_RANGE = (ipaddress.IPv4Network("232.0.0.0/8"),)
"""The SSM range of RFC 4607: groups joined per source only (RFC 4604 section 2.2.1)."""
DROP_LOG_INTERVAL = 60.0
"""Seconds between two info lines about one kind of dropped message on one interface (the rest go to debug)."""


# --- parameters -----------------------------------------------------------------------------


class ParameterError(ValueError):
    """A configuration value out of range; `key` is the configuration key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.also: list[ParameterError] = []
        """The other bad values of the same configuration (`Parameters.from_config` checks them all)."""


@dataclass(frozen=True, slots=True)
class Parameters:
    """The protocol's tunables (RFC 3376 section 8), in seconds; defaults are the RFC's.

    `from_config` resolves the derived defaults (startup query interval a
    quarter of the query interval; startup and last member query counts
    equal to the robustness variable) and checks every value.
    """

    version: int = 3
    robustness: int = 2
    query_interval: float = 125.0
    query_response_interval: float = 10.0
    last_member_query_interval: float = 1.0
    last_member_query_count: int = 2
    startup_query_interval: float = 31.25
    startup_query_count: int = 2
    ssm_range: tuple[ipaddress.IPv4Network, ...] = DEFAULT_SSM_RANGE
    require_local_source: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Parameters:
        """Read the fields' keys present in `config`; `ParameterError` names every bad one (`also`: the rest)."""
        errors: list[ParameterError] = []

        def checked(check: Callable[..., Any], *args: Any, fallback: Any) -> Any:
            try:
                return check(*args)
            except ParameterError as exc:
                errors.append(exc)
                return fallback  # the later checks go on with the default

        version = checked(_version, config, fallback=3)
        robustness = checked(_integer, config, "robustness", 2, 1, 7, fallback=2)
        qi = checked(_seconds, config, "query_interval", 125.0, 1.0, float(MAX_CODE_VALUE), fallback=125.0)
        max_tenths = MAX_V2_TENTHS if version == 2 else MAX_CODE_VALUE
        qri = checked(_seconds, config, "query_response_interval", 10.0, 0.1, max_tenths / 10, fallback=None)
        if qri is not None and qri >= qi:
            errors.append(ParameterError(
                "query_response_interval", f"must be less than query_interval ({qi} s), not {qri} s (RFC 3376 8.3)"
            ))  # fmt: skip
        lmqi = checked(_seconds, config, "last_member_query_interval", 1.0, 0.1, max_tenths / 10, fallback=1.0)
        lmqc = checked(_integer, config, "last_member_query_count", robustness, 1, 255, fallback=robustness)
        sqi = checked(_seconds, config, "startup_query_interval", qi / 4, 0.1, float(MAX_CODE_VALUE), fallback=qi / 4)
        sqc = checked(_integer, config, "startup_query_count", robustness, 1, 255, fallback=robustness)
        ssm = checked(_prefixes, config, "ssm_range", [str(n) for n in DEFAULT_SSM_RANGE], fallback=DEFAULT_SSM_RANGE)
        local = config.get("require_local_source", True)
        if not isinstance(local, bool):
            errors.append(ParameterError("require_local_source", f"must be true or false, not {local!r}"))
        if errors:
            first, *rest = errors
            first.also = rest
            raise first
        return cls(version, robustness, qi, qri, lmqi, lmqc, sqi, sqc, ssm, local)


def _version(config: Mapping[str, Any]) -> int:
    version = config.get("version", 3)
    if isinstance(version, bool) or version not in (2, 3):
        raise ParameterError("version", f"must be 2 (RFC 2236) or 3 (RFC 3376), not {version!r}")
    return int(version)


def _integer(config: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(key, f"must be an integer from {low} to {high}, not {value!r}")
    return value


def _prefixes(config: Mapping[str, Any], key: str, default: list[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """A list of multicast prefixes (one prefix alone may be written as a string; [] is none)."""
    value = config.get(key, default)
    if isinstance(value, str):
        items, keys = [value], [key]
    elif isinstance(value, list | tuple):
        items, keys = list(value), [f"{key}[{i}]" for i in range(len(value))]
    else:
        raise ParameterError(key, f'must be a list of multicast prefixes like ["232.0.0.0/8"], or [] for none, '
                                  f"not {value!r}")  # fmt: skip
    out = []
    for item, where in zip(items, keys, strict=True):
        if not isinstance(item, str):
            raise ParameterError(where, f'must be a multicast prefix written as a string like "232.0.0.0/8", '
                                        f"not {item!r}")  # fmt: skip
        try:
            out.append(multicast_prefix(item))
        except ValueError as exc:
            raise ParameterError(where, str(exc)) from None
    return tuple(out)


def _seconds(config: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ParameterError(key, f"must be a number of seconds from {low:g} to {high:g}, not {value!r}")
    return float(value)


# --- what the router tells its caller ---------------------------------------------------------


class Outgoing(NamedTuple):
    """A message to send out of `interface` to `destination` (the plugin adds the IP header)."""

    interface: Interface
    destination: str
    payload: bytes


class Change(NamedTuple):
    """A membership to add (`added`) or delete on the router's interface: (source, group), source 0.0.0.0 for (*,G)."""

    added: bool
    source: str
    group: str


DropReason = Literal["ignored_ssm_asm", "bad_ttl", "no_router_alert", "foreign_source"]


@dataclass(slots=True)
class Counters:
    """What happened on one interface, for operators (the plugin logs them and exposes them).

    ``*_received`` count every well-formed message of the kind, also those
    dropped afterwards.  A dropped message (or v3 group record) counts once,
    under the first reason that applies: ``bad_ttl`` (IP TTL not 1),
    ``no_router_alert`` (a v3 report without the Router Alert option),
    ``foreign_source`` (a report or leave from outside the interface's
    subnets), ``ignored_ssm_asm`` (an any-source join or leave for a group
    in the SSM range), ``ignored`` (everything else a router skips: unknown
    types, non-routable groups, v3 in v2 mode...).  ``no_router_alert_accepted``
    counts v1/v2 messages without Router Alert that were processed anyway.
    """

    general_queries_sent: int = 0
    group_queries_sent: int = 0
    queries_received: int = 0
    reports_received: int = 0
    leaves_received: int = 0
    malformed_dropped: int = 0
    ignored: int = 0
    own_ignored: int = 0
    send_errors: int = 0
    ignored_ssm_asm: int = 0
    bad_ttl: int = 0
    no_router_alert: int = 0
    foreign_source: int = 0
    no_router_alert_accepted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- addresses ------------------------------------------------------------------------------------


def _int(address: str) -> int:
    value: int = struct.unpack("!I", socket.inet_aton(address))[0]
    return value


def is_trackable_group(group: str) -> bool:
    """A multicast group outside the link-local block 224.0.0.0/24 (which routers never forward)."""
    value = _int(group)
    return 0xE0000000 <= value <= 0xEFFFFFFF and value >> 8 != 0xE00000


def is_valid_source(source: str) -> bool:
    """A unicast source a membership can name (not 0.0.0.0, loopback, multicast or reserved)."""
    value = _int(source)
    return value != 0 and value >> 24 != 127 and value < 0xE0000000


def _ranges(networks: Iterable[ipaddress.IPv4Network]) -> tuple[tuple[int, int], ...]:
    """(network, mask) as integers: membership tests without building address objects per message."""
    return tuple((int(n.network_address), int(n.netmask)) for n in networks)


def _in_ranges(address: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    value = _int(address)
    return any(value & mask == network for network, mask in ranges)


# --- the group record -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    group: str
    mode: str = INCLUDE
    timer: float = STOPPED
    sources: dict[str, float] = field(default_factory=dict)
    v1_host_until: float = STOPPED
    v2_host_until: float = STOPPED
    gq_left: int = 0
    gq_next: float = STOPPED
    sq_left: dict[str, int] = field(default_factory=dict)
    sq_next: float = STOPPED
    members: frozenset[tuple[str, str]] = frozenset()
    wake: float = math.inf

    def running(self, now: float) -> set[str]:
        return {s for s, t in self.sources.items() if t > now}

    def excluded(self) -> set[str]:
        return {s for s, t in self.sources.items() if t == STOPPED}


# --- the router -------------------------------------------------------------------------------------


class Router:
    """IGMP on one interface; see the module docstring for what it does and `Parameters` for its knobs.

    `address` is the interface's own IPv4 address (queries' source, and
    what the querier election compares); None until the interface has one,
    meanwhile the router listens but never queries.  `own_addresses` are
    every address of this machine: messages from them are ours (the
    kernel's own reports) and are ignored.  `subnets` are the networks of
    the interface's addresses: with ``require_local_source`` reports and
    leaves from elsewhere are dropped (none: every source is accepted).
    """

    def __init__(
        self,
        interface: Interface,
        params: Parameters | None = None,
        address: str | None = None,
        own_addresses: Iterable[str] = (),
        name: str = "",
        subnets: Iterable[ipaddress.IPv4Network] = (),
    ) -> None:
        self.interface = interface
        self.params = params or Parameters()
        self.address = address
        self.own_addresses = set(own_addresses)
        self.name = name or str(interface.if_index)
        self.subnets: tuple[ipaddress.IPv4Network, ...] = ()
        self._subnet_ranges: tuple[tuple[int, int], ...] = ()
        self.set_subnets(subnets)
        self._ssm_ranges = _ranges(self.params.ssm_range)
        self._drop_log: dict[DropReason, tuple[float, int]] = {}
        self.counters = Counters()
        self.querier = False
        self.querier_address: str | None = None
        self.robustness = self.params.robustness
        self.query_interval = self.params.query_interval
        self.other_querier_until: float | None = None
        self.next_general: float | None = None
        self.startup_left = 0
        self.started = False
        self._groups: dict[str, _Group] = {}
        self._wakeups: list[tuple[float, int, str]] = []
        self._seq = 0
        self._packets: list[Outgoing] = []
        self._changes: list[Change] = []
        self._warned_versions: set[tuple[str, int]] = set()

    # --- derived timers (RFC 3376 section 8) ----------------------------------------------

    @property
    def group_membership_interval(self) -> float:
        return self.robustness * self.query_interval + self.params.query_response_interval

    @property
    def other_querier_present_interval(self) -> float:
        return self.robustness * self.query_interval + self.params.query_response_interval / 2

    older_host_present_interval = group_membership_interval  # RFC 3376 8.13: the same sum

    @property
    def last_member_query_time(self) -> float:
        return self.params.last_member_query_interval * self.params.last_member_query_count

    # --- the caller's side --------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin as querier (the election settles it) with the startup queries."""
        self.started = True
        if self.address is not None:
            self._become_querier(now, startup=True)
        else:
            log.warning("igmp %s: the interface has no IPv4 address: listening only until it has one", self.name)

    def set_address(self, now: float, address: str | None) -> None:
        """The interface's address changed (or appeared): the election starts over from it."""
        if address == self.address:
            return
        old, self.address = self.address, address
        log.info("igmp %s: address %s -> %s", self.name, old, address)
        if not self.started:
            return
        if address is None:
            self._become_non_querier(None, None)
        elif self.querier or self.other_querier_until is None:
            self._become_querier(now, startup=old is None)

    def set_subnets(self, subnets: Iterable[ipaddress.IPv4Network]) -> None:
        """The networks of the interface's addresses (they may change while we run)."""
        subnets = tuple(subnets)
        if subnets != self.subnets:
            log.debug("igmp %s: local subnets: %s", self.name, ", ".join(map(str, subnets)) or "none (any source)")
            self.subnets, self._subnet_ranges = subnets, _ranges(subnets)

    def is_ssm(self, group: str) -> bool:
        """`group` is in the configured SSM range: only source-specific joins count for it."""
        return _in_ranges(group, self._ssm_ranges)

    def next_deadline(self) -> float | None:
        """When `tick` has something to do next (None: nothing scheduled)."""
        wakeup = self._wakeups[0][0] if self._wakeups else None
        return min((t for t in (self.next_general, self.other_querier_until, wakeup) if t is not None), default=None)

    def tick(self, now: float) -> None:
        """Run every timer due at `now`."""
        if self.other_querier_until is not None and self.other_querier_until <= now:
            log.info("igmp %s: querier %s went quiet: we are querier again", self.name, self.querier_address)
            self._become_querier(now, startup=False)
        if self.querier and self.next_general is not None and self.next_general <= now:
            self._send_general(now)
        while self._wakeups and self._wakeups[0][0] <= now:
            _, _, name = heapq.heappop(self._wakeups)
            g = self._groups.get(name)
            if g is not None:
                g.wake = math.inf
                self._expire(g, now)

    def receive(
        self, now: float, source: str, destination: str, payload: bytes, *, ttl: int = 1, router_alert: bool = True
    ) -> None:
        """One IGMP message (the IP payload) from `source`, sent to `destination`, arrived on our interface.

        `ttl` and `router_alert` are the IP header's (the defaults are what
        every conforming sender puts there): messages that could have come
        from beyond the link are dropped before they touch any state.
        """
        if source in self.own_addresses or source == self.address:
            self.counters.own_ignored += 1
            return
        try:
            message = packet.parse(payload)
        except MalformedPacket as exc:
            self.counters.malformed_dropped += 1
            log.debug("igmp %s: malformed packet from %s dropped: %s", self.name, source, exc)
            return
        if isinstance(message, Query):
            self.counters.queries_received += 1
            if ttl != 1:  # RFC 3376 4.1 / RFC 2236 2: a query is never routed; it cannot speak for this link
                self._drop(now, "bad_ttl", "v%d query from %s with TTL %d", message.version, source, ttl)
                return
            self._on_query(now, source, message)
        elif isinstance(message, Report | Leave | V3Report):
            if isinstance(message, Leave):
                self.counters.leaves_received += 1
            else:
                self.counters.reports_received += 1
            if not self._from_this_link(now, source, message, ttl, router_alert):
                return
            if isinstance(message, Report):
                self._on_old_report(now, source, message)
            elif isinstance(message, Leave):
                self._on_leave(now, source, message)
            else:
                self._on_v3_report(now, source, message)
        else:
            assert isinstance(message, Unknown)
            self.counters.ignored += 1
            log.debug("igmp %s: message type 0x%02x from %s ignored", self.name, message.type, source)

    def _from_this_link(
        self, now: float, source: str, message: Report | Leave | V3Report, ttl: int, router_alert: bool
    ) -> bool:
        """The checks of RFC 3376 section 9 and RFC 2236 section 9 on a report or leave; False: dropped (counted)."""
        if isinstance(message, V3Report):
            what = "v3 report"
        elif isinstance(message, Leave):
            what = f"leave for {message.group}"
        else:
            what = f"v{message.version} report for {message.group}"
        if ttl != 1:
            self._drop(now, "bad_ttl", "%s from %s with TTL %d", what, source, ttl)
            return False
        if not router_alert:
            if isinstance(message, V3Report):  # RFC 3376 9.2: SHOULD ignore a v3 report without it
                self._drop(now, "no_router_alert", "%s from %s without the Router Alert option", what, source)
                return False
            self.counters.no_router_alert_accepted += 1  # old hosts may omit it; the kernel accepts them too
        if (
            self.params.require_local_source
            and self._subnet_ranges
            and source != ANY  # RFC 3376 4.2.13: a host without an address yet reports from 0.0.0.0
            and not _in_ranges(source, self._subnet_ranges)
        ):
            self._drop(now, "foreign_source", "%s from %s (not on the interface's subnets %s)", what, source,
                       ", ".join(map(str, self.subnets)))  # fmt: skip
            return False
        return True

    def _drop(self, now: float, reason: DropReason, text: str, *args: object) -> None:
        """Count a dropped message under `reason`; say so at info at most once per `DROP_LOG_INTERVAL`."""
        setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        last, suppressed = self._drop_log.get(reason, (-math.inf, 0))
        if now - last >= DROP_LOG_INTERVAL:
            more = f"; {suppressed} more since the last such line" if suppressed else ""
            log.info("igmp %s: " + text + " ignored (counter %s; such lines at most once a minute, the rest at "
                     "debug%s)", self.name, *args, reason, more)  # fmt: skip
            self._drop_log[reason] = (now, 0)
        else:
            self._drop_log[reason] = (last, suppressed + 1)
            log.debug("igmp %s: " + text + " ignored (counter %s)", self.name, *args, reason)

    def take_packets(self) -> list[Outgoing]:
        """The messages decided since the last call, in order."""
        out, self._packets = self._packets, []
        return out

    def take_changes(self) -> list[Change]:
        """The membership changes decided since the last call, in order (adds before deletes of one group)."""
        out, self._changes = self._changes, []
        return out

    def memberships(self) -> set[tuple[str, str]]:
        """Every (source, group) this interface wants now, as MGM memberships."""
        return {m for g in self._groups.values() for m in g.members}

    def group_state(self, group: str) -> tuple[str, dict[str, float], float] | None:
        """(filter mode, {source: timer expiry}, group timer expiry) of `group`, for tests and `mgm` tools."""
        g = self._groups.get(group)
        return None if g is None else (g.mode, dict(g.sources), g.timer)

    def compatibility_mode(self, group: str, now: float) -> int:
        """The version the group's hosts speak (RFC 3376 7.3.2): 1, 2 or 3."""
        g = self._groups.get(group)
        return self.params.version if g is None else self._compat(g, now)

    # --- querier election ------------------------------------------------------------------------

    def _become_querier(self, now: float, *, startup: bool) -> None:
        self.querier = True
        self.querier_address = self.address
        self.other_querier_until = None
        self.robustness = self.params.robustness
        self.query_interval = self.params.query_interval
        self.startup_left = self.params.startup_query_count if startup else 1
        self._send_general(now)

    def _become_non_querier(self, querier: str | None, until: float | None) -> None:
        if self.querier and querier is not None:
            log.info("igmp %s: %s is querier (lower address than our %s): we stop querying",
                     self.name, querier, self.address)  # fmt: skip
        elif self.querier:
            log.info("igmp %s: the interface lost its address: we stop querying", self.name)
        self.querier = False
        self.querier_address = querier
        self.other_querier_until = until
        self.next_general = None
        self.startup_left = 0
        for g in self._groups.values():  # only the querier sends group queries
            g.gq_left, g.sq_left = 0, {}

    def _on_query(self, now: float, source: str, query: Query) -> None:
        if query.version != self.params.version and (source, query.version) not in self._warned_versions:
            self._warned_versions.add((source, query.version))
            log.warning("igmp %s: IGMPv%d query from %s while we run v%d: configure every router on the link alike "
                        "(RFC 3376 7.3.1)", self.name, query.version, source, self.params.version)  # fmt: skip
        if source != ANY and self.address is not None and _int(source) < _int(self.address):
            if query.version == 3:  # RFC 3376 4.1.6, 4.1.7: adopt the querier's robustness and interval
                self.robustness = query.qrv or self.params.robustness
                self.query_interval = float(query.qqi) if query.qqi else self.params.query_interval
            self._become_non_querier(source, now + self.other_querier_present_interval)
        elif self.address is None and source != ANY:
            self.querier_address = source
        if query.is_general or query.suppress or (g := self._groups.get(query.group)) is None:
            return
        if query.version == 3:
            lowered = now + self.last_member_query_time
        else:  # RFC 2236: a non-querier waits LMQC times the query's response time
            lowered = now + self.params.last_member_query_count * query.max_response / 10
        if query.sources:
            for s in query.sources:
                if g.sources.get(s, STOPPED) > lowered:
                    g.sources[s] = lowered
        elif g.mode == EXCLUDE and g.timer > lowered:
            g.timer = lowered
        self._schedule(g, now)

    def _send_general(self, now: float) -> None:
        p = self.params
        payload = packet.build_query(p.version, ANY, _tenths(p.query_response_interval), qrv=self.robustness,
                                     qqi=min(MAX_CODE_VALUE, max(1, round(self.query_interval))))  # fmt: skip
        self._packets.append(Outgoing(self.interface, packet.ALL_SYSTEMS, payload))
        self.counters.general_queries_sent += 1
        if self.startup_left > 0:
            self.startup_left -= 1
        interval = p.startup_query_interval if self.startup_left > 0 else self.query_interval
        self.next_general = now + interval

    # --- reports ------------------------------------------------------------------------------------

    def _accept_group(self, group: str, source: str, what: str) -> bool:
        if is_trackable_group(group):
            return True
        self.counters.ignored += 1
        log.debug("igmp %s: %s for %s from %s ignored (not a routable multicast group)", self.name, what, group, source)
        return False

    def _ssm_asm(self, now: float, group: str, source: str, what: str) -> bool:
        """True (and counted) when `what`, an any-source message, is for a group in the SSM range (RFC 4604 2.2.1).

        It is dropped whole: no (*,G) state, and no older-host-present timer
        either, which would make the group's v3 hosts' BLOCK records ignored.
        """
        if not self.is_ssm(group):
            return False
        ranges = ", ".join(map(str, self.params.ssm_range))
        kind = "leave" if what == "leave" else "join"
        self._drop(now, "ignored_ssm_asm", "%s for %s from %s (an any-source %s for a group in the SSM range %s, "
                   "RFC 4604)", what, group, source, kind, ranges)  # fmt: skip
        return True

    def _on_old_report(self, now: float, source: str, report: Report) -> None:
        what = f"v{report.version} report"
        if not self._accept_group(report.group, source, what) or self._ssm_asm(now, report.group, source, what):
            return
        g = self._group(report.group)
        if report.version == 1:
            g.v1_host_until = now + self.older_host_present_interval
        else:
            g.v2_host_until = now + self.older_host_present_interval
        self._record(now, g, MODE_IS_EXCLUDE, set())

    def _on_leave(self, now: float, source: str, leave: Leave) -> None:
        if not self._accept_group(leave.group, source, "leave") or self._ssm_asm(now, leave.group, source, "leave"):
            return
        g = self._groups.get(leave.group)
        if g is None:
            return  # INCLUDE({}) TO_IN({}): nothing to query
        if self._compat(g, now) == 1:
            self.counters.ignored += 1
            log.debug("igmp %s: leave for %s ignored: a v1 host is present", self.name, leave.group)
            return
        self._record(now, g, CHANGE_TO_INCLUDE_MODE, set())

    def _on_v3_report(self, now: float, source: str, report: V3Report) -> None:
        if self.params.version == 2:
            self.counters.ignored += 1
            log.debug("igmp %s: v3 report from %s ignored: we run IGMPv2", self.name, source)
            return
        for record in report.records:
            if record.type not in packet.RECORD_TYPES:
                self.counters.ignored += 1
                log.debug("igmp %s: record of unknown type %d from %s ignored", self.name, record.type, source)
                continue
            if not self._accept_group(record.group, source, f"{record.name} record"):
                continue
            if record.type in (MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE_MODE) and self._ssm_asm(
                now, record.group, source, f"{record.name} record"
            ):
                continue
            sources = {s for s in record.sources if is_valid_source(s)}
            if len(sources) != len(set(record.sources)):
                self.counters.ignored += 1
                log.debug("igmp %s: %s record for %s from %s: invalid sources dropped: %s", self.name, record.name,
                          record.group, source, sorted(set(record.sources) - sources))  # fmt: skip
            g = self._group(record.group)
            rtype = record.type
            compat = self._compat(g, now)
            if compat < 3:
                if rtype == BLOCK_OLD_SOURCES:
                    self._drop_if_empty(g, now)
                    continue
                if rtype == CHANGE_TO_EXCLUDE_MODE:
                    sources = set()
            self._record(now, g, rtype, sources)

    # --- RFC 3376 section 6.4: one record against the group's state ------------------------------------

    def _record(self, now: float, g: _Group, rtype: int, b: set[str]) -> None:
        gmi = now + self.group_membership_interval
        log.debug("igmp %s: %s %s%s in %s mode", self.name, packet.RECORD_NAMES[rtype], g.group,
                  sorted(b) if b else "{}", g.mode)  # fmt: skip
        if g.mode == INCLUDE:
            a = set(g.sources)
            if rtype in (MODE_IS_INCLUDE, ALLOW_NEW_SOURCES):
                self._set(g, b, gmi)
            elif rtype == BLOCK_OLD_SOURCES:
                self._query_sources(now, g, a & b)
            elif rtype in (MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE_MODE):
                g.mode = EXCLUDE
                for s in a - b:
                    del g.sources[s]
                    g.sq_left.pop(s, None)
                self._set(g, b - a, STOPPED)
                g.timer = gmi
                if rtype == CHANGE_TO_EXCLUDE_MODE:
                    self._query_sources(now, g, a & b)
            elif rtype == CHANGE_TO_INCLUDE_MODE:
                self._set(g, b, gmi)
                self._query_sources(now, g, a - b)
        else:
            x, y = g.running(now), g.excluded()
            if rtype in (MODE_IS_INCLUDE, ALLOW_NEW_SOURCES):
                self._set(g, b, gmi)
            elif rtype == BLOCK_OLD_SOURCES:
                self._set(g, b - x - y, g.timer)
                self._query_sources(now, g, b - y)
            elif rtype in (MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE_MODE):
                self._set(g, b - x - y, gmi if rtype == MODE_IS_EXCLUDE else g.timer)
                for s in (x | y) - b:
                    del g.sources[s]
                    g.sq_left.pop(s, None)
                if rtype == CHANGE_TO_EXCLUDE_MODE:
                    self._query_sources(now, g, b - y)
                g.timer = gmi
            elif rtype == CHANGE_TO_INCLUDE_MODE:
                self._set(g, b, gmi)
                self._query_sources(now, g, x - b)
                self._query_group(now, g)
        self._drop_if_empty(g, now)

    @staticmethod
    def _set(g: _Group, sources: set[str], expiry: float) -> None:
        for s in sources:
            g.sources[s] = expiry

    # --- RFC 3376 section 6.6.3: the querier's group queries ----------------------------------------------

    def _query_group(self, now: float, g: _Group) -> None:
        """Send Q(G): lower the group timer to LMQT, query now, retransmit LMQC - 1 times."""
        if not self.querier:
            return
        g.timer = min(g.timer, now + self.last_member_query_time)
        g.gq_left = self.params.last_member_query_count
        g.gq_next = now
        self._send_group_query(now, g)

    def _query_sources(self, now: float, g: _Group, sources: set[str]) -> None:
        """Send Q(G,A): lower A's source timers to LMQT, query now, retransmit LMQC - 1 times."""
        if not self.querier:
            return
        lowered = now + self.last_member_query_time
        for s in sources:
            if g.sources.get(s, STOPPED) == STOPPED:
                continue
            g.sources[s] = min(g.sources[s], lowered)
            g.sq_left[s] = self.params.last_member_query_count
        if g.sq_left:
            g.sq_next = now
            self._send_source_query(now, g)

    def _send_group_query(self, now: float, g: _Group) -> None:
        p = self.params
        suppress = p.version == 3 and g.timer - now > self.last_member_query_time  # v2 has no S flag
        payload = packet.build_query(p.version, g.group, _tenths(p.last_member_query_interval), suppress=suppress,
                                     qrv=self.robustness, qqi=round(self.query_interval))  # fmt: skip
        self._packets.append(Outgoing(self.interface, g.group, payload))
        self.counters.group_queries_sent += 1
        g.gq_left -= 1
        g.gq_next = now + p.last_member_query_interval if g.gq_left > 0 else STOPPED

    def _send_source_query(self, now: float, g: _Group) -> None:
        p = self.params
        lmqt = self.last_member_query_time
        pending = sorted(s for s, n in g.sq_left.items() if n > 0 and g.sources.get(s, STOPPED) != STOPPED)
        high = [s for s in pending if g.sources[s] - now > lmqt]
        low = [s for s in pending if g.sources[s] - now <= lmqt]
        for suppress, sources in ((True, high), (False, low)):
            for i in range(0, len(sources), MAX_SOURCES_PER_QUERY):
                payload = packet.build_query(3, g.group, _tenths(p.last_member_query_interval), suppress=suppress,
                                             qrv=self.robustness, qqi=round(self.query_interval),
                                             sources=sources[i : i + MAX_SOURCES_PER_QUERY])  # fmt: skip
                self._packets.append(Outgoing(self.interface, g.group, payload))
                self.counters.group_queries_sent += 1
        g.sq_left = {s: g.sq_left[s] - 1 for s in pending if g.sq_left[s] > 1}
        g.sq_next = now + p.last_member_query_interval if g.sq_left else STOPPED

    # --- RFC 3376 section 6.5: timers ------------------------------------------------------------------------

    def _expire(self, g: _Group, now: float) -> None:
        if self.querier and g.gq_left > 0 and g.gq_next <= now:
            self._send_group_query(now, g)
        if self.querier and g.sq_left and g.sq_next <= now:
            self._send_source_query(now, g)
        for s, expiry in list(g.sources.items()):
            if expiry != STOPPED and expiry <= now:
                if g.mode == INCLUDE:
                    del g.sources[s]
                    g.sq_left.pop(s, None)
                else:
                    g.sources[s] = STOPPED  # stays as "do not forward" until the group timer says otherwise
        if g.mode == EXCLUDE and g.timer <= now:
            running = g.running(now)
            log.debug("igmp %s: group timer of %s expired: %s", self.name, g.group,
                      f"INCLUDE {sorted(running)}" if running else "deleted")  # fmt: skip
            g.mode = INCLUDE
            g.timer = STOPPED
            g.sources = {s: t for s, t in g.sources.items() if s in running}
        self._drop_if_empty(g, now)

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _group(self, group: str) -> _Group:
        return self._groups.setdefault(group, _Group(group))

    def _compat(self, g: _Group, now: float) -> int:
        if g.v1_host_until > now:
            return 1
        if g.v2_host_until > now:
            return 2
        return self.params.version

    def _drop_if_empty(self, g: _Group, now: float) -> None:
        """Publish the group's membership changes; forget it when it is INCLUDE({}); schedule its next timer."""
        gone = g.mode == INCLUDE and not g.sources
        wanted = frozenset({(ANY, g.group)} if g.mode == EXCLUDE else {(s, g.group) for s in g.sources})
        self._changes += [Change(True, *member) for member in sorted(wanted - g.members)]
        self._changes += [Change(False, *member) for member in sorted(g.members - wanted)]
        g.members = wanted
        if gone:
            del self._groups[g.group]
            return
        self._schedule(g, now)

    def _schedule(self, g: _Group, now: float) -> None:
        times = [t for t in g.sources.values() if t != STOPPED]
        if g.mode == EXCLUDE:
            times.append(g.timer)
        if g.gq_left > 0:
            times.append(g.gq_next)
        if g.sq_left:
            times.append(g.sq_next)
        when = min(times, default=math.inf)
        if when < g.wake:  # no timer running gives inf, which is never below wake
            g.wake = when
            self._seq += 1
            heapq.heappush(self._wakeups, (when, self._seq, g.group))


def _tenths(seconds: float) -> int:
    """Seconds as the tenths the Max Resp Code carries, rounded down (at least 1)."""
    return max(1, min(MAX_CODE_VALUE, int(seconds * 10 + 1e-9)))

"""The hooks the Linux and the simulated forwarder share.

A forwarder registers as a protocol of its own (`FORWARDER_PROTOCOL_ID`)
and owns no interface.  It follows the manager's ``state`` stream (the
host subscribes because `mgm_state_event` is implemented) and mirrors it
onto its dataplane through `Mirror`; it turns the dataplane's upcalls into
``new_packet`` and ``wrong_interface`` requests, and every
``counters_interval`` seconds reports the counters (``mfe_counters``),
which feed the manager's statistics and MFE expiry.

Configuration keys of ``[plugins.forwarder]`` (all optional):

* ``counters_interval`` (seconds, default 5): how often counters are reported;
* ``restart_grace`` (seconds, default 5): after the manager restarts, how long
  kernel entries it does not know yet keep forwarding before they are removed;
* ``wrong_if`` (``"all"``, ``"oil"``, ``"none"``; Linux only, default all):
  which wrong-interface packets the kernel reports (see `mroute.MrouteSocket`);
* ``backend`` (``"auto"``, ``"mrt"``, ``"nft"``; Linux only, default auto): the
  kernel's multicast routing table (MRT), or nftables (`nftables`); auto takes
  MRT where the kernel has it, else nftables;
* ``table`` (int; MRT only): a multicast routing table other than the default;
* ``nft_table`` (name, default "mgmbus") and ``nflog_group`` (0-65535, default
  28007; nftables only): what a second forwarder in the same network
  namespace must choose differently.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, plugin_table
from mgm.core.types import FORWARDER_PROTOCOL_ID
from mgm.plugins.forwarder.mirror import Dataplane, Mirror, SgKey
from mgm.plugins.forwarder.mroute import MAXVIFS, Upcall
from mgm.plugins.forwarder.nftables import DEFAULT_NFLOG_GROUP, DEFAULT_TABLE, TABLE_NAME
from mgm.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

FORWARDER_COMPONENT_ID = 1
COUNTERS_BATCH = 256
"""Entries per mfe_counters request: keeps each frame far below the manager's 64 KiB limit."""


@dataclass(frozen=True, slots=True)
class Settings:
    counters_interval: float = 5.0
    restart_grace: float = 5.0
    wrong_if: str = "all"
    table: int | None = None
    backend: str = "auto"
    nft_table: str = DEFAULT_TABLE
    nflog_group: int = DEFAULT_NFLOG_GROUP


SETTINGS_KEYS = frozenset({"counters_interval", "restart_grace", "wrong_if", "table", "backend", "nft_table",
                           "nflog_group"})  # fmt: skip
BACKENDS = ("auto", "mrt", "nft")


def read_settings(config: Mapping[str, Any], extra_keys: frozenset[str] = frozenset()) -> Settings:
    """The forwarder's keys, checked; a mistake (a typo too) names the file, key and line."""
    error = plugin_table(config, "forwarder").error
    known = SETTINGS_KEYS | PLUGIN_COMMON_KEYS | extra_keys
    for key in config:
        if key not in known:
            raise error(key, f"unknown key for the forwarder (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {key: config[key] for key in SETTINGS_KEYS if key in config}
    for key in ("counters_interval", "restart_grace"):
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.05 <= value <= 3600:
                raise error(key, f"must be a number of seconds between 0.05 and 3600, not {value!r}")
            values[key] = float(value)
    for key, choices in (("wrong_if", ("all", "oil", "none")), ("backend", BACKENDS)):
        if values.get(key, choices[0]) not in choices:
            either = ", ".join(f'"{c}"' for c in choices[:-1]) + f' or "{choices[-1]}"'
            raise error(key, f"must be {either}, not {values[key]!r}")
    for key, high, what in (("table", 2**32 - 1, "a routing table number"),
                            ("nflog_group", 0xFFFF, "an NFLOG group number 0-65535")):  # fmt: skip
        number = values.get(key, 0)
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= high:
            raise error(key, f"must be {what}, not {number!r}")
    name = values.get("nft_table", DEFAULT_TABLE)
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise error("nft_table", f"must be a name of letters, digits and _ (at most 31, a letter first), not {name!r}")
    if values.get("backend") == "nft" and "table" in values:
        raise error("table", 'is a multicast routing table number, which backend = "nft" does not use')
    return Settings(**values)


class ForwarderPlugin:
    """Base of `LinuxForwarder` and `SimForwarder`: subclasses provide the dataplane and its I/O."""

    label = "forwarder"
    log = logging.getLogger(__name__)
    extra_keys: frozenset[str] = frozenset()
    """Keys of the table that only this forwarder reads, beside `SETTINGS_KEYS`."""
    max_vifs: int | None = MAXVIFS
    """The dataplane's VIF numbers (see `Mirror`); None where an interface's VIF is its if_index."""

    @property
    def registration_name(self) -> str:
        """The name the host registers with (what `mgm show` and the monitor display)."""
        return self.label

    def __init__(self) -> None:
        self.settings = Settings()
        self.dataplane: Dataplane | None = None
        self.mirror: Mirror | None = None
        self.ctx: PluginContext | None = None
        self._epoch: Any = None
        self._grace: asyncio.TimerHandle | None = None

    # --- what subclasses provide ----------------------------------------------------------------

    def open_dataplane(self, settings: Settings) -> Dataplane:
        raise NotImplementedError

    def adopt_installed(self, mirror: Mirror) -> None:
        """Give `mirror` what a previous forwarder left on the dataplane (nothing survives a simulated one)."""

    def start_io(self, mgm: PluginContext) -> None:
        """Start reading upcalls (and whatever else the dataplane needs)."""

    def stop_io(self) -> None:
        """Stop reading and close the dataplane."""

    async def read_counters(self) -> None:
        """Bring the dataplane's counters up to date before a report (the kernel's are read per entry)."""

    # --- hooks ------------------------------------------------------------------------------------------

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Check the settings and open the dataplane now, the first thing the host asks of a plugin.

        A failure stops the host before it registers; and a restarted
        forwarder's kernel entries forward again from here on, seconds
        before the manager lets it register (a crashed predecessor's
        registration lingers until its liveness runs out).
        """
        self.settings = read_settings(config, self.extra_keys)
        if self.mirror is None:
            self.dataplane = self.open_dataplane(self.settings)
            self.mirror = Mirror(self.dataplane, self.log, max_vifs=self.max_vifs)
            self.adopt_installed(self.mirror)
        return FORWARDER_PROTOCOL_ID, FORWARDER_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        if self.mirror is None:
            self.mgm_protocol(config)
        self.ctx = mgm
        self.start_io(mgm)
        mgm.spawn(self._report_counters(mgm))
        self.log.info("%s started: counters every %.1f s", self.label, self.settings.counters_interval)

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        if self._grace is not None:
            self._grace.cancel()
        if self.mirror is not None:
            self.mirror.withdraw()  # a stop, not a crash: leave nothing forwarding behind
        self.stop_io()
        self.log.info("%s stopped", self.label)

    @hookimpl
    def mgm_state_event(self, mgm: PluginContext, event: Mapping[str, Any]) -> None:
        assert self.mirror is not None
        self.mirror.apply(event)

    @hookimpl
    def mgm_state_resync(self, mgm: PluginContext, state: Mapping[str, Any]) -> None:
        assert self.mirror is not None
        epoch = getattr(mgm.client, "epoch", None)
        restarted = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        self.mirror.resync(state, defer_stale=restarted)
        if restarted and self.mirror.stale:
            if self._grace is not None:
                self._grace.cancel()
            self._grace = asyncio.get_running_loop().call_later(self.settings.restart_grace, self._grace_over)

    def _grace_over(self) -> None:
        """Ask the restarted manager for the entries it still lacks; each stays installed meanwhile."""
        assert self.mirror is not None and self.ctx is not None
        requests = self.mirror.stale_requests()
        if requests:
            self.log.info("%d forwarding entr(ies) kept over the manager restart: asking for their MFEs",
                          len(requests))  # fmt: skip
        for args in requests:
            future = self.ctx.request("new_packet", args)
            future.add_done_callback(functools.partial(self._request_done, (args["source"], args["group"])))

    # --- upcalls and counters ----------------------------------------------------------------------------

    def on_upcalls(self, upcalls: list[Upcall]) -> None:
        """Each upcall becomes at most one request; none waits for the manager."""
        assert self.mirror is not None and self.ctx is not None
        for upcall in upcalls:
            request = self.mirror.upcall(upcall)
            if request is None:
                continue
            op, args = request
            future = self.ctx.request(op, args)
            if op == "new_packet":
                future.add_done_callback(functools.partial(self._request_done, (upcall.source, upcall.group)))

    def _request_done(self, key: SgKey, future: asyncio.Future[dict[str, Any]]) -> None:
        if self.mirror is None:
            return
        self.mirror.request_done(key)
        if key in self.mirror.stale and (future.cancelled() or future.exception() is not None):
            self.mirror.forget(key)

    def report_counters(self, mgm: PluginContext) -> int:
        """Send the counters of every installed entry now; the number of entries."""
        assert self.mirror is not None
        entries = self.mirror.counters()
        for start in range(0, len(entries), COUNTERS_BATCH):
            mgm.request("mfe_counters", {"entries": entries[start : start + COUNTERS_BATCH]})
        return len(entries)

    async def _report_counters(self, mgm: PluginContext) -> None:
        while True:
            await asyncio.sleep(self.settings.counters_interval)
            if mgm.client.manager_lost:
                continue  # queued, each would be refused by the next manager; the next report has it all
            await self.read_counters()
            self.report_counters(mgm)

"""Entry point ``forwarder-sim``: the simulated forwarder, for machines without a multicast routing socket.

It behaves like the Linux forwarder (same hooks, same requests, same
mirror) over `SimDataplane`, an in-memory stand-in for the kernel's VIFs
and forwarding cache that counts what it "forwards".  Packets arrive only
when someone injects them: `SimForwarder.inject` in-process, or, when the
plugin's table sets ``control = "ipc://..."``, over a ZeroMQ REP socket
(msgpack maps, mgmbus's codec): ``{"cmd": "inject", "source", "group",
"if_index", "count"?, "size"?}`` -> ``{"ok": true, "result": OUTCOME}``,
``{"cmd": "mfc"}`` and ``{"cmd": "vifs"}`` -> what is installed.

Everything it logs carries "simulated" (its logger is
``mgm.plugins.forwarder.simulated``), so nobody mistakes it for forwarding.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mgm.core.types import is_link_local
from mgm.plugins.forwarder.mirror import Dataplane, SgKey
from mgm.plugins.forwarder.mroute import IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, MAXVIFS, MrouteError, SgCount, Upcall
from mgm.plugins.forwarder.plugin import ForwarderPlugin, Settings

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

ASSERT_INTERVAL = 3.0
"""Like the kernel: at most one wrong-interface upcall per entry in this many seconds."""
UNRESOLVED_QUEUE = 3
"""Like the kernel: packets of an unknown (S,G) held (then forwarded) while the manager decides."""


@dataclass
class SimEntry:
    parent: int
    oifs: frozenset[int]
    packets: int = 0
    bytes: int = 0
    wrong_if: int = 0
    last_assert: float = float("-inf")


@dataclass
class SimVif:
    if_index: int
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # in packets, out packets, in bytes, out bytes


class SimDataplane:
    """VIFs and forwarding entries in memory, with the kernel's rules for upcalls and counting."""

    def __init__(self, on_upcall: Callable[[Upcall], None]) -> None:
        self.on_upcall = on_upcall
        self.vifs: dict[int, SimVif] = {}
        self.mfc: dict[SgKey, SimEntry] = {}
        self.unresolved: dict[SgKey, list[tuple[int, int]]] = {}  # key -> queued (vif, size)

    # --- the Dataplane interface ----------------------------------------------------------------

    def add_vif(self, vifi: int, if_index: int, *, threshold: int = 1) -> None:
        if not 0 <= vifi < MAXVIFS or vifi in self.vifs:
            raise MrouteError(errno.EADDRINUSE if vifi in self.vifs else errno.ENFILE, f"add vif {vifi}")
        self.vifs[vifi] = SimVif(if_index)

    def del_vif(self, vifi: int) -> None:
        if self.vifs.pop(vifi, None) is None:
            raise MrouteError(errno.EADDRNOTAVAIL, f"del vif {vifi}: no such VIF")

    def add_mfc(self, source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> None:
        key = (source, group)
        entry = self.mfc.get(key)
        out = frozenset(oifs)
        if entry is None:
            entry = self.mfc[key] = SimEntry(parent, out)
        else:
            entry.parent, entry.oifs = parent, out
        for vif, size in self.unresolved.pop(key, []):  # the kernel sends what it held once resolved
            self._forward(entry, vif, size)

    def del_mfc(self, source: str, group: str) -> None:
        if self.mfc.pop((source, group), None) is None:
            raise MrouteError(errno.ENOENT, f"del mfc ({source}, {group}): no such entry")

    def sg_count(self, source: str, group: str) -> SgCount | None:
        entry = self.mfc.get((source, group))
        return None if entry is None else SgCount(entry.packets, entry.bytes, entry.wrong_if)

    # --- packets ------------------------------------------------------------------------------------

    def packet(self, source: str, group: str, if_index: int, size: int = 100) -> str:
        """One packet arrives on `if_index`: "forwarded", "queued", "wrong_if", "local" or "no_vif"."""
        if is_link_local(group):
            return "local"
        vif = next((v for v, s in self.vifs.items() if s.if_index == if_index), None)
        if vif is None:
            return "no_vif"
        self.vifs[vif].counts[0] += 1
        self.vifs[vif].counts[2] += size
        key = (source, group)
        entry = self.mfc.get(key)
        if entry is None:
            queue = self.unresolved.get(key)
            if queue is None:
                queue = self.unresolved[key] = []
                self.on_upcall(Upcall(IGMPMSG_NOCACHE, vif, source, group))
            if len(queue) < UNRESOLVED_QUEUE:
                queue.append((vif, size))
            return "queued"
        return self._forward(entry, vif, size, key)

    def _forward(self, entry: SimEntry, vif: int, size: int, key: SgKey | None = None) -> str:
        if vif != entry.parent:
            entry.wrong_if += 1
            now = time.monotonic()
            if key is not None and now - entry.last_assert >= ASSERT_INTERVAL:
                entry.last_assert = now
                self.on_upcall(Upcall(IGMPMSG_WRONGVIF, vif, *key))
            return "wrong_if"
        entry.packets += 1
        entry.bytes += size
        for out in entry.oifs:
            if out in self.vifs:
                self.vifs[out].counts[1] += 1
                self.vifs[out].counts[3] += size
        return "forwarded"


class SimForwarder(ForwarderPlugin):
    """The simulated forwarder (see the module doc)."""

    label = "forwarder (simulated)"
    log = logging.getLogger("mgm.plugins.forwarder.simulated")
    extra_keys = frozenset({"control"})

    def __init__(self) -> None:
        super().__init__()
        self.sim: SimDataplane | None = None
        self._pending: list[Upcall] = []

    def open_dataplane(self, settings: Settings) -> Dataplane:
        self.sim = SimDataplane(self._upcall)
        self.log.warning("simulated forwarder: no kernel forwarding happens; packets exist only when injected")
        return self.sim

    def start_io(self, mgm: PluginContext) -> None:
        endpoint = mgm.config.get("control")
        if endpoint is not None:
            mgm.spawn(self._serve(str(endpoint)))

    def _upcall(self, upcall: Upcall) -> None:
        # Like the kernel's, an upcall is read later, not inside the packet's own processing.
        self._pending.append(upcall)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        pending, self._pending = self._pending, []
        if self.ctx is not None:
            self.on_upcalls(pending)

    def inject(self, source: str, group: str, if_index: int, count: int = 1, size: int = 100) -> dict[str, int]:
        """`count` packets of (source, group) arrive on `if_index`; how many had each outcome."""
        assert self.sim is not None
        outcomes = dict(Counter(self.sim.packet(source, group, if_index, size) for _ in range(count)))
        self.log.debug("simulated packets (%s, %s) on %d: %s", source, group, if_index, outcomes)
        return outcomes

    def installed(self) -> list[dict[str, Any]]:
        """The simulated forwarding cache, like /proc/net/ip_mr_cache."""
        assert self.sim is not None
        return [{"source": s, "group": g, "parent": e.parent, "oifs": sorted(e.oifs), "packets": e.packets,
                 "bytes": e.bytes, "wrong_if": e.wrong_if} for (s, g), e in sorted(self.sim.mfc.items())]  # fmt: skip

    async def _serve(self, endpoint: str) -> None:
        import zmq
        import zmq.asyncio

        from mgm.bus.codec import pack, unpack

        sock = zmq.asyncio.Context.instance().socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        self.log.info("simulated forwarder: injection socket on %s", endpoint)
        try:
            while True:
                request = unpack(await sock.recv())
                try:
                    reply = {"ok": True, "result": self._command(request)}
                except (KeyError, TypeError, ValueError) as exc:
                    reply = {"ok": False, "message": f"bad command {request!r}: {exc!r}"}
                await sock.send(pack(reply))
        finally:
            sock.close(0)

    def _command(self, request: Mapping[str, Any]) -> Any:
        cmd = request["cmd"]
        if cmd == "inject":
            return self.inject(str(request["source"]), str(request["group"]), int(request["if_index"]),
                               int(request.get("count", 1)), int(request.get("size", 100)))  # fmt: skip
        if cmd == "mfc":
            return self.installed()
        if cmd == "vifs":
            assert self.mirror is not None
            return {str(i): v for i, v in self.mirror.vifs.items()}
        raise ValueError(f"unknown command {cmd!r}")

"""Plugins that record every hook call and obey commands from a control socket.

Each binds a ZeroMQ REP socket on the ipc path of its config key ``control``
(msgpack maps both ways, with mgmbus's codec).  A request is
``{"cmd": NAME, ...}``; every reply has ``ok`` (and ``status``/``message``
when the manager refused what the command asked).  Commands:

* ``ping`` -> handle, protocol, pid
* ``calls`` -> ``calls``: every hook call so far, ``{"hook": NAME, ...arguments}``
  (interfaces as ``[if_index, next_hop]``)
* ``ledger`` -> ``handle``, ``interfaces``, ``memberships``: the context's ledger
  (each membership ``[source, source_mask, group, group_mask, [if_index, next_hop], flags]``)
* ``add_membership`` / ``delete_membership`` (source, group, if_index,
  next_hop?, source_mask?, group_mask?, flags?), ``take`` / ``release``
  (if_index, next_hop?), ``request`` (op, args): through the context, and the
  reply waits for the manager's
* ``answers`` (rpf?, creation?, prune?): how to answer questions from now on:
  absent/None = the default, ``"never"`` = do not answer at all,
  rpf ``{"if_index", "next_hop", "upstream_neighbor"}``,
  creation ``{"disable": [[if_index, next_hop], ...]}``, prune a timeout
* ``raise_in`` (hook): that hook raises from now on (the host must survive)

The IGMP-like plugin (protocol 10) keeps the memberships added through
``add_membership`` as its own table and re-adds the ones on an interface
from its ``mgm_enable_igmp`` hook, through the context, the way a real IGMP
must; the outcome of each re-add is recorded as a ``readd_result`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio

from mgm.bus.codec import pack, unpack
from mgm.bus.status import MgmError
from mgm.core.runtime.config import Config
from mgm.core.types import ANY, IGMP_PROTOCOL_ID, Interface
from mgm.plugins.context import PluginContext
from mgm.plugins.hookspecs import ANSWER_LATER, hookimpl


def plain(value: Any) -> Any:
    """Hook arguments as msgpack can carry them: interfaces as [if_index, next_hop]."""
    if isinstance(value, Interface):
        return [value.if_index, value.next_hop]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Recorder:
    """Every hook recorded; questions answered as the control socket says."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.ctx: PluginContext | None = None
        self.answers: dict[str, Any] = {}
        self.raise_in: set[str] = set()
        self.server: asyncio.Task[None] | None = None

    def record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append({"hook": hook, **{k: plain(v) for k, v in kwargs.items()}})
        if hook in self.raise_in:
            raise RuntimeError(f"{hook} raises because the test said so")

    def record_args(self, hook: str, scope: Mapping[str, Any]) -> None:
        """Record `hook` with its arguments (its `locals()` on entry) but self and mgm."""
        self.record(hook, **{k: v for k, v in scope.items() if k not in ("self", "mgm")})

    def answer(self, kind: str, given: Callable[[Any], Any]) -> Any:
        """As `answers` says: absent/None the default (None), "never" ANSWER_LATER, else given(what it says)."""
        mode = self.answers.get(kind)
        return None if mode is None else ANSWER_LATER if mode == "never" else given(mode)

    # --- lifecycle ----------------------------------------------------------------------

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        self.ctx = mgm
        self.record("mgm_start", protocol=list(mgm.protocol), interfaces=list(mgm.interfaces))
        self.server = mgm.spawn(self.serve(str(config["control"])))

    @hookimpl
    def mgm_replay(self, mgm: PluginContext) -> None:
        self.record("mgm_replay", handle=mgm.handle)

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.record("mgm_stop")

    @hookimpl
    def mgm_reload(self, config: Mapping[str, Any], whole_config: Config) -> None:
        self.record("mgm_reload", config=config, source=whole_config.source)

    # --- callbacks ----------------------------------------------------------------------------

    @hookimpl
    def mgm_local_join(
        self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, interface: Interface
    ) -> None:
        self.record_args("mgm_local_join", locals())

    @hookimpl
    def mgm_local_leave(
        self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, interface: Interface
    ) -> None:
        self.record_args("mgm_local_leave", locals())

    @hookimpl
    def mgm_join_alert(
        self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, member_update: bool
    ) -> None:
        self.record_args("mgm_join_alert", locals())

    @hookimpl
    def mgm_prune_alert(self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str,
                        interface: Interface, member_delete: bool, question: int | None) -> Any:  # fmt: skip
        self.record_args("mgm_prune_alert", locals())
        return None if member_delete else self.answer("prune", float)

    @hookimpl
    def mgm_wrong_if(self, mgm: PluginContext, source: str, group: str, interface: Interface) -> None:
        self.record_args("mgm_wrong_if", locals())

    @hookimpl
    def mgm_rpf(
        self, mgm: PluginContext, source: str, group: str, interface: Interface, upstream_neighbor: str, question: int
    ) -> Any:
        self.record_args("mgm_rpf", locals())
        return self.answer("rpf", lambda m: (Interface(m["if_index"], m.get("next_hop", ANY)),
                                             m.get("upstream_neighbor", ANY)))

    @hookimpl
    def mgm_creation_alert(self, mgm: PluginContext, source: str, group: str, in_interface: Interface,
                           oil: Sequence[Interface], question: int) -> Any:  # fmt: skip
        self.record("mgm_creation_alert", source=source, group=group, in_interface=in_interface, oil=list(oil),
                    question=question)  # fmt: skip
        return self.answer("creation", lambda m: {Interface(i, nh): False for i, nh in m.get("disable", [])})

    # --- the control socket ------------------------------------------------------------------

    async def serve(self, endpoint: str) -> None:
        sock = zmq.asyncio.Context.instance().socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        try:
            while True:
                request = unpack(await sock.recv())
                try:
                    reply = await self.command(request)
                except MgmError as exc:
                    reply = {"ok": False, "status": int(exc.status), "message": exc.message}
                except Exception as exc:
                    reply = {"ok": False, "status": None, "message": repr(exc)}
                await sock.send(pack(reply))
        finally:
            sock.close(0)

    async def command(self, req: Mapping[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        assert ctx is not None
        cmd = req["cmd"]
        if cmd == "ping":
            return {"ok": True, "handle": ctx.handle, "protocol": list(ctx.protocol), "pid": os.getpid()}
        if cmd == "calls":
            return {"ok": True, "calls": self.calls}
        if cmd == "ledger":  # what the context replays after a manager restart: what this plugin holds
            return {"ok": True, "handle": ctx.handle, "interfaces": plain(list(ctx.interfaces)),
                    "memberships": plain([list(m) for m in ctx.memberships])}  # fmt: skip
        if cmd in ("add_membership", "delete_membership"):
            iface = Interface(req["if_index"], req.get("next_hop", ANY))
            method = ctx.add_membership if cmd == "add_membership" else ctx.delete_membership
            self.membership_changed(cmd, req, iface)
            await method(req["source"], req["group"], iface, source_mask=req.get("source_mask"),
                         group_mask=req.get("group_mask"), flags=req.get("flags", 1))  # fmt: skip
            return {"ok": True}
        if cmd in ("take", "release"):
            iface = Interface(req["if_index"], req.get("next_hop", ANY))
            await (ctx.take_interface(iface) if cmd == "take" else ctx.release_interface(iface))
            return {"ok": True}
        if cmd == "request":
            return {"ok": True, "result": await ctx.request(req["op"], req.get("args", {}))}
        if cmd == "answers":
            self.answers = {k: req.get(k) for k in ("rpf", "creation", "prune")}
            return {"ok": True}
        if cmd == "raise_in":
            self.raise_in.add(req["hook"])
            return {"ok": True}
        return {"ok": False, "status": None, "message": f"unknown command {cmd!r}"}

    def membership_changed(self, cmd: str, req: Mapping[str, Any], iface: Interface) -> None:
        """A subclass keeping its own membership table updates it here."""


class RoutingPlugin(Recorder):
    """A routing protocol: ids from its config (protocol_id, component_id)."""


class ObserverPlugin(Recorder):
    """Follows the state stream as well (the host subscribes only because these hooks exist)."""

    @hookimpl
    def mgm_state_event(self, mgm: PluginContext, event: Mapping[str, Any]) -> None:
        self.record("mgm_state_event", event=event)

    @hookimpl
    def mgm_state_resync(self, mgm: PluginContext, state: Mapping[str, Any]) -> None:
        self.record("mgm_state_resync", state=state)


class IgmpPlugin(Recorder):
    """IGMP's side of the MGM contract: protocol 10, its own membership table, re-adds on enable."""

    def __init__(self) -> None:
        super().__init__()
        self.members: dict[tuple[str, str, Interface], None] = {}

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        return IGMP_PROTOCOL_ID, 1

    def membership_changed(self, cmd: str, req: Mapping[str, Any], iface: Interface) -> None:
        key = (req["source"], req["group"], iface)
        if cmd == "add_membership":
            self.members[key] = None
        else:
            self.members.pop(key, None)

    @hookimpl
    def mgm_disable_igmp(self, mgm: PluginContext, interface: Interface) -> None:
        self.record("mgm_disable_igmp", interface=interface)

    @hookimpl
    def mgm_enable_igmp(self, mgm: PluginContext, interface: Interface) -> None:
        """Re-add every membership on `interface` now, inside the hook: the requests leave after it returns."""
        self.record("mgm_enable_igmp", interface=interface)
        for source, group, iface in list(self.members):
            if iface == interface:
                fut = mgm.add_membership(source, group, iface)
                fut.add_done_callback(lambda f, s=source, g=group: self.readd_done(f, s, g, interface))

    def readd_done(self, fut: asyncio.Future[dict[str, Any]], source: str, group: str, iface: Interface) -> None:
        error = None
        with contextlib.suppress(asyncio.CancelledError):
            exc = fut.exception()
            error = None if exc is None else repr(exc)
        self.calls.append({"hook": "readd_result", "source": source, "group": group, "interface": plain(iface),
                           "error": error})  # fmt: skip

"""`mgm plugin NAME`: one plugin in one process, its hooks driven by the bus.

Theory of operation
-------------------
1. Load: the entry point NAME of group ``mgm.plugins`` (a module, or a class
   instantiated without arguments) is registered in a ``pluggy.PluginManager``
   over `mgm.plugins.hookspecs`; ``check_pending`` makes a misspelled hook
   fail here, before anything is connected.
2. Connect and register: the protocol comes from the config keys
   ``protocol_id``/``component_id`` or the ``mgm_protocol`` hook.  The host
   follows its own ``proto/P/C`` stream before registering, so no callback
   is missed, takes the configured interfaces, calls ``mgm_start`` and then
   keeps the registration alive with heartbeats.
3. Events: each event of the proto stream becomes one hook call.  Questions
   are answered at once with the hook's answer or the default.  After a gap
   the client resyncs; the host compares the snapshot with what it has
   delivered and delivers the difference (local joins and leaves, IGMP
   enable/disable, questions still open).
4. A new manager epoch: register again, replay the context's ledger, call
   ``mgm_replay``.
5. SIGTERM/SIGINT: ``mgm_stop``, release the interfaces (which deletes the
   plugin's memberships), deregister, exit 0.
6. SIGHUP: the file is read again, once, here (plugins never read it), and
   a file that loads goes to ``mgm_reload``; one reload at a time, in order.

A hook that raises is logged with the plugin and the event; the host goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pluggy

from mgm.bus import topics
from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import Config, ConfigError, Mistakes, PluginConfig, effective_manager, find_line, load
from mgm.core.runtime.keys import client_curve
from mgm.core.runtime.logs import fields as log_fields
from mgm.core.runtime.logs import setup_from as setup_logging
from mgm.core.types import ANY, IGMP_PROTOCOL_ID, ClientId, Interface
from mgm.plugins import hookspecs
from mgm.plugins.context import PluginContext
from mgm.plugins.hookspecs import ANSWER_LATER

if TYPE_CHECKING:
    from mgm.bus.sockets import Curve

log = logging.getLogger(__name__)
T = TypeVar("T")

ENTRY_POINT_GROUP = "mgm.plugins"
EXIT_CONFIG = 2
"""Exit status for a mistake the operator must fix (config, plugin, entry point): restarting will not help."""
EXIT_FAILURE = 1
EXIT_UNSUPPORTED = 3
"""Exit status for a machine that lacks what the plugin needs (a kernel feature, a library): not a config mistake,
and a restart will not help either."""
REGISTER_PATIENCE = 5.0
"""Seconds to keep trying to register while a crashed predecessor's registration lingers (liveness is 3 s)."""
REGISTER_RETRY = 0.25
LAPSE_CONFIRM = 2.0
"""After the manager refused our handle, how long a heartbeat of a restarted manager may take to tell us so."""
RESTART_GRACE = 5.0
"""After a manager restart, a local member the new manager has not announced again (IGMP replays at once)
within this many seconds is gone (e.g. its host left while the manager was down): local_leave then."""
SHUTDOWN_TIMEOUT = 2.0
"""How long a stopping host waits for the manager to confirm its release and deregistration."""
ANSWERED_KEPT = 4096
"""Question ids remembered so a resync does not answer twice; questions live a deadline (0.1 s), so a few suffice."""


QUESTION_HOOKS = {"rpf": "mgm_rpf", "creation_alert": "mgm_creation_alert"}
"""The manager's questions and the hooks that answer them: a plugin without the hook is not asked."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while the host was still starting."""


class PluginLoadError(Exception):
    """The plugin cannot be loaded or does not fit the hook specs."""


class PluginUnsupported(PluginLoadError):
    """This machine lacks what the plugin needs (e.g. a kernel built without a feature): `EXIT_UNSUPPORTED`."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the plugin's entry point name (group mgm.plugins)")
    parser.add_argument("--config", default=None, help="configuration file (default: the embedded default)")


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"mgm plugin: {line}", file=sys.stderr)
        return EXIT_CONFIG
    settings = effective_manager(config, args.api, args.events, args.log_level)
    level, api, events = str(settings.log_level), str(settings.api), str(settings.events)
    setup_logging(args, tag=args.name, level=level)
    try:
        curve = client_curve(args, config, config.plugin(args.name))
    except ValueError as exc:
        log.error("plugin %s: %s", args.name, exc)
        return EXIT_CONFIG
    if curve is None and any(ep.startswith("tcp://") for ep in (api, events)):
        # The manager binds tcp only with CURVE: without keys every ping would go unanswered until the timeout.
        log.error("plugin %s: the manager is on tcp, which needs CURVE: give --curve-key FILE and --server-key KEY, "
                  "or curve_key in [plugins.%s] (or [manager] curve_client_key) and [manager] "
                  "curve_server_public_key (docs/security.md)", args.name, args.name)  # fmt: skip
        return EXIT_CONFIG
    try:
        return asyncio.run(Host(args.name, config, api, events, curve).run())
    except (PluginLoadError, ConfigError) as exc:
        for line in exc.lines() if isinstance(exc, ConfigError) else [str(exc)]:
            log.error("%s", line)
        return EXIT_UNSUPPORTED if isinstance(exc, PluginUnsupported) else EXIT_CONFIG


# --- loading ------------------------------------------------------------------------------


def load_plugin(name: str) -> pluggy.PluginManager:
    """A PluginManager holding entry point `name`, validated against the hook specs."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise PluginLoadError(
            f"no plugin named {name!r} in entry point group {ENTRY_POINT_GROUP} "
            f"(installed: {', '.join(known) or 'none'})"
        )
    ep = next(iter(found))
    try:
        obj = ep.load()
        if inspect.isclass(obj):
            obj = obj()
    except Exception as exc:
        raise PluginLoadError(f"plugin {name!r} ({ep.value}) failed to load: {exc!r}") from exc
    return plugin_manager(name, obj)


def plugin_manager(name: str, obj: object) -> pluggy.PluginManager:
    """Register `obj` as plugin `name`; a hook or argument the specs do not know fails here."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(obj, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = sorted(n for n in dir(hookspecs) if n.startswith("mgm_"))
        raise PluginLoadError(
            f"plugin {name!r} does not fit the hook specs: {exc} (the hooks are: {', '.join(known)})"
        ) from exc
    if not pm.get_hookcallers(obj):
        log.warning("plugin %s implements no hook at all", name)
    return pm


def implements(pm: pluggy.PluginManager, hook: str) -> bool:
    return bool(getattr(pm.hook, hook).get_hookimpls())


def protocol_of(pm: pluggy.PluginManager, plugin: PluginConfig, config: Config) -> ClientId:
    """Config keys win over the mgm_protocol hook; one of them must say both ids."""
    try:
        from_hook = pm.hook.mgm_protocol(config=plugin.table)
    except (ConfigError, PluginLoadError):
        raise  # the plugin's own words: its keys (file, key, line), or what it cannot run on
    except Exception as exc:
        raise PluginLoadError(f"plugin {plugin.name!r}: mgm_protocol raised {exc!r}") from exc
    if from_hook is not None and not (
        isinstance(from_hook, tuple | list)
        and len(from_hook) == 2
        and all(type(v) is int and 0 <= v <= 0xFFFFFFFF for v in from_hook)
    ):
        raise PluginLoadError(
            f"plugin {plugin.name!r}: mgm_protocol returned {from_hook!r}, not (protocol_id, component_id) ints"
        )
    pid = plugin.protocol_id if plugin.protocol_id is not None else (from_hook[0] if from_hook else None)
    cid = plugin.component_id if plugin.component_id is not None else (from_hook[1] if from_hook else None)
    if pid is None or cid is None:
        missing = "protocol_id" if pid is None else "component_id"
        table = f"plugins.{plugin.name}"
        raise ConfigError(  # a missing key has no line: name the table's
            config.source,
            f"{table}.{missing}",
            find_line(config.text, table),
            f"plugin {plugin.name!r} has no mgm_protocol hook (or it returned None), "
            "so its table must set protocol_id and component_id",
        )
    return ClientId(int(pid), int(cid))


def resolve_interfaces(plugin: PluginConfig, config: Config) -> list[Interface]:
    """Config interface names to if_index (this machine's), ints as they are; every unknown name is a mistake."""
    result = []
    mistakes = Mistakes()
    for ref in plugin.interfaces:
        if isinstance(ref.name_or_index, int):
            result.append(Interface(ref.name_or_index, ref.next_hop))
            continue
        try:
            result.append(Interface(socket.if_nametoindex(ref.name_or_index), ref.next_hop))
        except OSError:
            mistakes.add(config.error(ref.key_path, f"no interface named {ref.name_or_index!r} here"))
    mistakes.raise_any()
    return result


# --- the host ------------------------------------------------------------------------------


def _iface(fields: Mapping[str, Any], prefix: str = "") -> Interface:
    return Interface(int(fields[f"{prefix}if_index"]), str(fields.get(f"{prefix}next_hop", ANY)))


MASKED_FLOW = ("source", "source_mask", "group", "group_mask")
"""An event's flow with its masks: the first fields of a local member and of the join and prune alerts."""


def _masked_flow(fields: Mapping[str, Any]) -> dict[str, str]:
    return {key: fields[key] for key in MASKED_FLOW}


def _member(fields: Mapping[str, Any]) -> tuple[str, str, str, str, Interface]:
    return (fields["source"], fields["source_mask"], fields["group"], fields["group_mask"], _iface(fields))


class Host:
    """One plugin on the bus: see the module's theory of operation."""

    def __init__(self, name: str, config: Config, api: str, events: str, curve: Curve | None = None) -> None:
        self.name = name
        self.curve = curve
        """CURVE keys for a tcp manager (mgm.core.runtime.keys.client_curve)."""
        self.config = config
        self.plugin = config.plugin(name)
        self.api = api
        self.events = events
        self.pm = load_plugin(name)
        mistakes = Mistakes()  # the plugin's own checks and the interfaces: every mistake at once
        protocol = mistakes.check(protocol_of, self.pm, self.plugin, config)
        interfaces = mistakes.check(resolve_interfaces, self.plugin, config)
        mistakes.raise_any()
        assert protocol is not None and interfaces is not None
        self.protocol, self.interfaces = protocol, interfaces
        self.ctx: PluginContext | None = None
        self.stopping = asyncio.Event()
        # what the hooks were told, to diff a resync snapshot against
        self.local_members: set[tuple[str, str, str, str, Interface]] = set()
        self.igmp_disabled: set[Interface] = set()
        self.answered: dict[int, None] = {}  # question ids handled, oldest first, bounded
        self.registered = False
        self._registering = asyncio.Lock()
        self.started = False
        self.early: list[Callable[[], None]] = []
        self.unconfirmed: set[tuple[str, str, str, str, Interface]] = set()  # local members of the last epoch
        self.reloading = asyncio.Lock()  # two quick SIGHUPs apply one after the other

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        from mgm.bus.client import Client

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        client = Client(api=self.api, events=self.events, curve=self.curve)
        ctx = self.ctx = PluginContext(name=self.name, client=client, protocol=self.protocol, config=self.plugin.table)
        log.info("plugin %s: connecting to the manager at %s", self.name, self.api)
        try:
            await self.unless_stopped(client.start())
        except (TimeoutError, OSError) as exc:
            log.error("plugin %s: cannot reach the manager at %s: %s", self.name, self.api, exc)
            await client.close()
            return EXIT_FAILURE
        except Stopped:
            # stopped for good before the start: let the plugin release what mgm_protocol opened (the
            # forwarder's kernel VIFs); a failure above keeps it, for the restart the supervisor makes
            await self.shutdown(call_stop=True)
            return 0
        client.on_new_epoch = self._on_new_epoch
        client.on_registration_lost = self._on_registration_lost
        client.on_manager_lost = lambda: log.warning("plugin %s: no heartbeat from the manager", self.name)
        try:
            await self.unless_stopped(self.join_the_bus())
        except (MgmError, TimeoutError) as exc:
            log.error("plugin %s (%s/%s): %s", self.name, *self.protocol, exc)
            await self.shutdown(call_stop=False)
            return EXIT_FAILURE
        except Stopped:
            await self.shutdown(call_stop=True)
            return 0
        log.info(
            "plugin %s registered as protocol %d component %d, owns %s",
            self.name,
            *self.protocol,
            ", ".join(f"{i.if_index}/{i.next_hop}" for i in ctx.interfaces) or "no interface",
        )
        self.call("mgm_start", "start", mgm=ctx, config=self.plugin.table)
        self.started = True
        early, self.early = self.early, []
        for deliver in early:  # what arrived before mgm_start, in order
            deliver()
        await self.stopping.wait()
        log.info("plugin %s stopping", self.name)
        await self.shutdown(call_stop=True)
        return 0

    async def join_the_bus(self) -> None:
        """Register, follow our stream(s), take the configured interfaces."""
        ctx, client = self.ctx, self.ctx.client if self.ctx else None
        assert ctx is not None and client is not None
        await self.register(wait_for_predecessor=REGISTER_PATIENCE)
        # Follow once registered: the new subscription makes the manager send a heartbeat at once,
        # which names our stream, so the client syncs it within a round trip.
        client.follow(topics.proto(*self.protocol), self.on_event, self.on_snapshot)
        if implements(self.pm, "mgm_state_event") or implements(self.pm, "mgm_state_resync"):
            client.follow(topics.STATE, self.on_state_event, self.on_state_snapshot)
        for interface in self.interfaces:
            await ctx.take_interface(interface)

    async def unless_stopped(self, aw: Coroutine[Any, Any, T]) -> T:
        """Await `aw` unless SIGTERM/SIGINT comes first (then cancel it and raise Stopped)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped

    def _on_new_epoch(self, old: int | None, new: int) -> None:
        assert self.ctx is not None
        self.ctx.spawn(self.new_epoch(old, new))

    def _on_registration_lost(self) -> None:
        assert self.ctx is not None
        if not self.stopping.is_set() and self.registered:
            self.ctx.spawn(self._registration_lost())

    async def _registration_lost(self) -> None:
        """Our handle was refused: register again, unless the manager restarted (its new epoch registers us).

        A restarted manager refuses the old handle too, before our subscriptions reach it; its heartbeat on
        `hb` then tells the new epoch within a second.  Asking it ourselves (a ping) would register us before
        we can hear our events (disable_igmp, local_join...), so we wait for that heartbeat instead.
        """
        assert self.ctx is not None
        epoch = self.ctx.client.epoch
        await asyncio.sleep(LAPSE_CONFIRM)
        client = self.ctx.client
        if client.epoch != epoch or client.heartbeat_handle is not None or not self.registered:
            return  # a restarted manager: `new_epoch` registered us (or is doing it)
        if self.stopping.is_set():
            return
        why = ("the manager dropped our registration (no request from us within its liveness: was this process "
               "stalled?), releasing what we held")  # fmt: skip
        await self.register_again(why, epoch)

    async def register(self, wait_for_predecessor: float = 0.0) -> None:
        """Register; while the pair is taken, retry for `wait_for_predecessor` seconds.

        A previous instance that crashed still holds the registration until
        the manager notices it is gone (3 s without a heartbeat); waiting
        that long beats failing and being restarted by the supervisor.
        """
        assert self.ctx is not None
        # A plugin object may name itself for the manager's tables (e.g. "forwarder (simulated)").
        name = str(getattr(self.pm.get_plugin(self.name), "registration_name", self.name))
        questions = self.questions()
        args = {"protocol_id": self.protocol.protocol_id, "component_id": self.protocol.component_id,
                "name": name, "questions": questions}  # fmt: skip
        deadline = asyncio.get_running_loop().time() + wait_for_predecessor
        while True:
            try:
                result = await self.ctx.client.request("register_protocol", args)
                break
            except MgmError as exc:
                if exc.status != Status.ERROR_ALREADY_EXISTS or asyncio.get_running_loop().time() >= deadline:
                    raise
                log.info("plugin %s: protocol %d/%d is still registered (a previous instance?); retrying",
                         self.name, *self.protocol)  # fmt: skip
                await asyncio.sleep(REGISTER_RETRY)
        self.ctx.handle = self.ctx.client.heartbeat_handle = result["handle"]
        self.registered = True

    def questions(self) -> list[str]:
        """The questions we answer: the manager takes the default of the others at once, instead of
        asking and waiting a round trip for the answer the host would give for a missing hook.

        Those whose hooks the plugin implements, narrowed by its ``questions`` attribute if it has one
        (a plugin that learns from its configuration that it would only return the default).
        """
        implemented = [question for question, hook in QUESTION_HOOKS.items() if implements(self.pm, hook)]
        narrowed = getattr(self.pm.get_plugin(self.name), "questions", None)
        if narrowed is None:
            return implemented
        return [question for question in implemented if question in narrowed]

    async def shutdown(self, *, call_stop: bool) -> None:
        ctx = self.ctx
        assert ctx is not None
        if call_stop:
            self.call("mgm_stop", "stop", mgm=ctx)
        await ctx.cancel_tasks()
        if self.registered:
            # one pipeline, in order on one connection: the releases, then the deregistration
            replies = [ctx.release_interface(interface) for interface in ctx.interfaces]
            ctx.client.heartbeat_handle = None
            replies.append(ctx.request("deregister_protocol"))
            _done, pending = await asyncio.wait(replies, timeout=SHUTDOWN_TIMEOUT)
            if pending:
                log.warning("plugin %s: the manager did not confirm the release and deregistration within %.0f s",
                            self.name, SHUTDOWN_TIMEOUT)  # fmt: skip
            self.registered = False
        await ctx.client.close()

    async def new_epoch(self, old: int | None, new: int) -> None:
        """The manager restarted: it knows nothing of us."""
        await self.register_again(f"the manager restarted (epoch {old} -> {new})", new)

    async def register_again(self, why: str, epoch: int | None) -> None:
        """The manager knows nothing of us (`why`): register, replay the ledger, tell the plugin."""
        assert self.ctx is not None
        async with self._registering:  # two quick restarts: the second waits for the first's registration
            if self.registered and await self._handle_known():
                log.info("plugin %s: %s; already registered there (a registration begun for the one before)",
                         self.name, why)  # fmt: skip
                return
            log.warning("plugin %s: %s; registering again", self.name, why)
            self.registered = False
            self.answered.clear()
            self.igmp_disabled.clear()  # a new manager has disabled nothing
            self.unconfirmed = set(self.local_members)
            try:
                await self.register(REGISTER_PATIENCE)  # a dropped client's cleanup may still be running (183)
            except MgmError as exc:
                log.error("plugin %s: cannot register again (%s): %s", self.name, why, exc)
                self.stopping.set()
                return
            await self.ctx.replay()
            self.call("mgm_replay", "replay", mgm=self.ctx)
        await asyncio.sleep(RESTART_GRACE)
        if self.ctx.client.epoch != epoch:
            return  # restarted again meanwhile: that epoch's task decides
        for gone in sorted(self.unconfirmed & self.local_members, key=repr):
            self.local_members.discard(gone)
            self._local("mgm_local_leave", gone, "local_leave (not announced again after the manager restart)")
        self.unconfirmed = set()

    async def _handle_known(self) -> bool:
        """Whether the manager now answering knows our handle (a heartbeat with it is accepted)."""
        assert self.ctx is not None
        try:
            await self.ctx.client.request("heartbeat", {"handle": self.ctx.handle})
        except MgmError:
            return False
        return True

    # --- SIGHUP -----------------------------------------------------------------------------------

    def on_sighup(self) -> None:
        if not self.started:  # mgm_start gets the file as loaded at start: reload after it
            self.early.append(self.on_sighup)
            return
        assert self.ctx is not None
        self.ctx.spawn(self.reload())

    async def reload(self) -> bool:
        """Read the file again and hand it to ``mgm_reload``; False where nothing was applied (logged).

        Read here, once, so that no plugin reads the file itself and a broken one is reported once, with its line.
        """
        source = self.config.source
        if not implements(self.pm, "mgm_reload"):
            log.info("plugin %s: SIGHUP ignored: it has no mgm_reload hook (restart it to apply a new file)", self.name)
            return False
        if source.startswith("<"):  # e.g. <embedded default config>: no --config
            log.warning("plugin %s: SIGHUP: no file to read again, the configuration is the %s", self.name, source)
            return False
        async with self.reloading:
            log.info("plugin %s: SIGHUP: reading %s again", self.name, source)
            try:
                config = load(source)
                for result in self.pm.hook.mgm_reload(mgm=self.ctx, config=config.plugin(self.name).table,
                                                      whole_config=config):  # fmt: skip
                    if inspect.isawaitable(result):
                        await result
            except ConfigError as exc:
                for line in exc.lines():
                    log.error("plugin %s: reload refused, what is in force stays: %s", self.name, line)
                return False
            except Exception:
                log.exception("plugin %s: hook mgm_reload raised", self.name)
                return False
            return True

    # --- calling hooks -----------------------------------------------------------------------

    def call(self, hook: str, what: str, **kwargs: Any) -> Any:
        """Call a hook; an exception is logged with the plugin and the event, and gives None.

        Each call is a debug line, and a failure an error line, with the fields
        protocol, interface, group and source where the call has them.  A hook the plugin does not
        implement is neither called nor logged (what pluggy would return: None, or [] for a hook
        that is not firstresult): the forwarder, say, gets every join and prune alert and uses none,
        and their lines cost CPU on the join path of the routing protocols (bench/README.md).
        """
        caller = getattr(self.pm.hook, hook)
        if not caller.get_hookimpls():
            return None if caller.spec is not None and caller.spec.opts.get("firstresult") else []
        if log.isEnabledFor(logging.DEBUG):
            log.debug("plugin %s: %s on %s", self.name, hook, what, extra=self._hook_fields(hook, kwargs))
        try:
            return caller(**kwargs)
        except Exception:
            log.exception("plugin %s: hook %s raised on %s", self.name, hook, what,
                          extra=self._hook_fields(hook, kwargs))  # fmt: skip
            return None

    def _hook_fields(self, hook: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        interface = kwargs.get("interface") or kwargs.get("in_interface")
        return log_fields(
            protocol=self.protocol,
            interface=(interface.if_index, interface.next_hop) if isinstance(interface, Interface) else None,
            group=kwargs.get("group"),
            source=kwargs.get("source"),
            plugin=self.name,
            hook=hook,
        )

    # --- the proto stream ----------------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any]) -> None:
        if not self.started:
            self.early.append(lambda: self.on_event(event))
            return
        etype = event.get("type")
        handler = self.HANDLERS.get(str(etype))
        if handler is None:
            log.warning("plugin %s: event of unknown type %r ignored: %s", self.name, etype, dict(event))
            return
        try:
            handler(self, event)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("plugin %s: malformed %s event %s: %r", self.name, etype, dict(event), exc)

    def on_snapshot(self, stream: str, state: Mapping[str, Any]) -> None:
        """Deliver what changed while we were not listening, as the hooks would have seen it."""
        if not self.started:
            self.early.append(lambda: self.on_snapshot(stream, state))
            return
        if not state.get("registered", False):
            return  # between registrations (start, manager restart): nothing of ours to compare
        members = {_member(m) for m in state.get("local_members", [])}
        for gone in sorted(self.local_members - members, key=repr):
            self.local_members.discard(gone)
            self._local("mgm_local_leave", gone, "local_leave (resync)")
        self.unconfirmed -= members
        for new in sorted(members - self.local_members, key=repr):
            self.local_members.add(new)
            self._local("mgm_local_join", new, "local_join (resync)")
        if self.protocol.protocol_id == IGMP_PROTOCOL_ID:
            for entry in state.get("interfaces", []):
                iface, enabled = _iface(entry), bool(entry.get("igmp_enabled", True))
                if enabled == (iface in self.igmp_disabled):  # not what the hooks were last told
                    self._set_igmp(iface, enabled, " (resync)")
        for question in state.get("questions", []):
            if question.get("question") not in self.answered:
                self.on_event(question)

    def _local(self, hook: str, member: tuple[str, str, str, str, Interface], what: str) -> None:
        source, _, group, _, interface = member
        self.call(hook, f"{what} {source}/{group} on {interface.if_index}", mgm=self.ctx,
                  **dict(zip((*MASKED_FLOW, "interface"), member, strict=True)))  # fmt: skip

    def _set_igmp(self, iface: Interface, enabled: bool, why: str = "") -> None:
        """mgm_enable_igmp or mgm_disable_igmp, remembered for the next resync."""
        (self.igmp_disabled.discard if enabled else self.igmp_disabled.add)(iface)
        verb = "enable" if enabled else "disable"
        self.call(f"mgm_{verb}_igmp", f"{verb}_igmp on {iface.if_index}{why}", mgm=self.ctx, interface=iface)

    def _local_join(self, event: Mapping[str, Any]) -> None:
        member = _member(event)
        self.unconfirmed.discard(member)
        self.local_members.add(member)
        self._local("mgm_local_join", member, "local_join")

    def _local_leave(self, event: Mapping[str, Any]) -> None:
        member = _member(event)
        self.local_members.discard(member)
        self._local("mgm_local_leave", member, "local_leave")

    def _join_alert(self, event: Mapping[str, Any]) -> None:
        self.call("mgm_join_alert", f"join_alert {event['source']}/{event['group']}", mgm=self.ctx,
                  **_masked_flow(event), member_update=bool(event["member_update"]))  # fmt: skip

    def _prune_alert(self, event: Mapping[str, Any]) -> None:
        member_delete = bool(event["member_delete"])
        question = event.get("question")
        what = f"prune_alert {event['source']}/{event['group']}"
        timeout = self.call("mgm_prune_alert", what, mgm=self.ctx, **_masked_flow(event), interface=_iface(event),
                            member_delete=member_delete, question=question)  # fmt: skip
        if question is None:
            return
        if timeout is ANSWER_LATER:
            self._mark_answered(question)
            return
        fields: dict[str, Any] = {}
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            fields["timeout"] = float(timeout)
        elif timeout is not None:
            log.error("plugin %s: mgm_prune_alert returned %r, not a timeout > 0; answering the default",
                      self.name, timeout)  # fmt: skip
        self._answer(question, what, fields)

    def _wrong_if(self, event: Mapping[str, Any]) -> None:
        self.call("mgm_wrong_if", f"wrong_if {event['source']}/{event['group']}", mgm=self.ctx, source=event["source"],
                  group=event["group"], interface=_iface(event))  # fmt: skip

    def _rpf(self, event: Mapping[str, Any]) -> None:
        question = event["question"]
        interface = _iface(event)
        upstream = str(event.get("upstream_neighbor", ANY))
        what = f"rpf {event['source']}/{event['group']}"
        result = self.call(
            "mgm_rpf", what, mgm=self.ctx, source=event["source"], group=event["group"],
            interface=interface, upstream_neighbor=upstream, question=question,
        )  # fmt: skip
        if result is ANSWER_LATER:
            self._mark_answered(question)
            return
        if result is not None:
            try:
                new_iface, new_upstream = result
                interface = Interface(*new_iface)
                upstream = str(new_upstream)
            except (TypeError, ValueError):
                log.error("plugin %s: mgm_rpf returned %r, not (Interface, upstream); answering the default",
                          self.name, result)  # fmt: skip
        self._answer(question, what, {"if_index": interface.if_index, "next_hop": interface.next_hop,
                                      "upstream_neighbor": upstream})  # fmt: skip

    def _creation_alert(self, event: Mapping[str, Any]) -> None:
        question = event["question"]
        oil = [_iface(entry) for entry in event["oil"]]
        what = f"creation_alert {event['source']}/{event['group']}"
        result = self.call(
            "mgm_creation_alert", what, mgm=self.ctx, source=event["source"], group=event["group"],
            in_interface=_iface(event, "in_"), oil=oil, question=question,
        )  # fmt: skip
        if result is ANSWER_LATER:
            self._mark_answered(question)
            return
        enabled: Mapping[Any, Any] = {}
        if result is not None:
            if isinstance(result, Mapping):
                enabled = {Interface(*k): v for k, v in result.items()}
            else:
                log.error("plugin %s: mgm_creation_alert returned %r, not a mapping; enabling all", self.name, result)
        answer = [{"if_index": i.if_index, "next_hop": i.next_hop, "enabled": bool(enabled.get(i, True))} for i in oil]
        self._answer(question, what, {"oil": answer})

    def _mark_answered(self, question: int) -> None:
        self.answered[question] = None
        if len(self.answered) > ANSWERED_KEPT:
            del self.answered[next(iter(self.answered))]

    def _answer(self, question: int, what: str, fields: dict[str, Any]) -> None:
        assert self.ctx is not None
        self._mark_answered(question)
        self.ctx.answer(question, **fields)

    HANDLERS: ClassVar[dict[str, Callable[[Host, Mapping[str, Any]], None]]] = {
        "enable_igmp": lambda host, event: host._set_igmp(_iface(event), True),
        "disable_igmp": lambda host, event: host._set_igmp(_iface(event), False),
        "local_join": _local_join,
        "local_leave": _local_leave,
        "join_alert": _join_alert,
        "prune_alert": _prune_alert,
        "wrong_if": _wrong_if,
        "rpf": _rpf,
        "creation_alert": _creation_alert,
    }

    # --- the state stream ------------------------------------------------------------------------

    def on_state_event(self, event: Mapping[str, Any]) -> None:
        if not self.started:
            self.early.append(lambda: self.on_state_event(event))
            return
        self.call("mgm_state_event", f"state {event.get('type')}", mgm=self.ctx, event=event)

    def on_state_snapshot(self, stream: str, state: Mapping[str, Any]) -> None:
        if not self.started:
            self.early.append(lambda: self.on_state_snapshot(stream, state))
            return
        self.call("mgm_state_resync", "state resync", mgm=self.ctx, state=state)

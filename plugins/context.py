"""What every hook receives as ``mgm``: the plugin's handle on the manager.

Every method that changes the manager's state sends its request at once and
returns an ``asyncio.Future`` of the reply's result.  A hook may ignore the
future (a refusal is logged with the plugin's name either way) or hand it to a
coroutine started with `spawn` that awaits it; a hook never awaits it
itself, because hooks are plain functions that must return quickly.

The context keeps a ledger of the interfaces the plugin took, the
boundaries it set and the memberships it added through it.  When the manager restarts, the host
registers again and replays that ledger, so a plugin that only uses these
methods needs no restart logic of its own (``mgm_replay`` is for the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mgm.bus.status import MgmError, Status
from mgm.core.types import ANY, CORE_OPS, HOST_MASK, MGM_JOIN_STATE_FLAG, ClientId, Interface

if TYPE_CHECKING:
    from mgm.bus.client import Client

T = TypeVar("T")

HANDLE_OPS = CORE_OPS - {"register_protocol", "get_protocol_on_interface", "get_mfe", "list_mfes",
                         "get_protocol_status"}  # fmt: skip
"""Operations whose args carry the client's handle; `PluginContext.request` fills it in."""

MembershipKey = tuple[str, str, str, str, Interface, int]
"""(source, source_mask, group, group_mask, interface, flags): one ledger entry."""


def default_mask(address: str) -> str:
    """The mask that goes with an address in the MGM: 0.0.0.0 for the wildcard, all-ones otherwise."""
    return ANY if address == ANY else HOST_MASK


class PluginContext:
    """The plugin's view of the manager, passed to every hook as ``mgm``.

    Attributes:
        name: the plugin's entry point name.
        protocol: the ``ClientId(protocol_id, component_id)`` it registered as.
        handle: the handle the manager gave it (changes when the manager restarts).
        config: its ``[plugins.NAME]`` table, read-only.
        log: a logger named ``mgm.plugin.NAME``.
        client: the bus `Client`, for ``await mgm.client.request(op, args)``
            inside coroutines started with `spawn` (never inside a hook).
    """

    def __init__(
        self,
        *,
        name: str,
        client: Client,
        protocol: ClientId,
        config: Mapping[str, Any],
        handle: int | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.protocol = protocol
        self.config = config
        self.handle = handle
        self.log = logging.getLogger(f"mgm.plugin.{name}")
        # insertion-ordered sets; the value tells one add from a later add of the same key
        self._interfaces: dict[Interface, object] = {}
        self._memberships: dict[MembershipKey, object] = {}
        self._boundaries: dict[Interface, tuple[tuple[str, str], ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- requests ---------------------------------------------------------------------

    def request(self, op: str, args: Mapping[str, Any] | None = None) -> asyncio.Future[dict[str, Any]]:
        """Send any operation now; the handle is filled in for the operations that take one.

        Returns the future of the reply's result.  A refusal (`MgmError`)
        or a timeout is always logged as a warning naming the plugin, the op
        and its arguments, whether or not someone awaits the future.
        """
        full = dict(args or {})
        if op in HANDLE_OPS:
            full.setdefault("handle", self.handle)
        fut = self.client.request_nowait(op, full)
        fut.add_done_callback(lambda f: self._log_failure(f, op, full))
        return fut

    def add_membership(
        self,
        source: str,
        group: str,
        interface: Interface,
        *,
        source_mask: str | None = None,
        group_mask: str | None = None,
        flags: int = MGM_JOIN_STATE_FLAG,
    ) -> asyncio.Future[dict[str, Any]]:
        """[MgmAddGroupMembershipEntry] Receivers for (source, group) on `interface`, which you own.

        Masks default from the addresses (0.0.0.0 -> 0.0.0.0, else
        255.255.255.255), so ``add_membership("0.0.0.0", "239.1.1.1", iface)``
        is a (*,G) join.  The membership is replayed after a manager restart
        until you delete it or release the interface.
        """
        key = self._membership_key(source, group, interface, source_mask, group_mask, flags)
        self._memberships[key] = entry = object()
        fut = self.request("add_group_membership", _membership_args(key))
        self._forget_if_refused(fut, self._memberships, key, entry)  # the manager said no: nothing to replay
        return fut

    def delete_membership(
        self,
        source: str,
        group: str,
        interface: Interface,
        *,
        source_mask: str | None = None,
        group_mask: str | None = None,
        flags: int = MGM_JOIN_STATE_FLAG,
    ) -> asyncio.Future[dict[str, Any]]:
        """[MgmDeleteGroupMembershipEntry] The mirror of `add_membership` (same defaults)."""
        key = self._membership_key(source, group, interface, source_mask, group_mask, flags)
        self._memberships.pop(key, None)
        return self.request("delete_group_membership", _membership_args(key))

    def take_interface(self, interface: Interface) -> asyncio.Future[dict[str, Any]]:
        """[MgmTakeInterfaceOwnership] Own `interface`; re-taken after a manager restart."""
        self._interfaces[interface] = entry = object()
        fut = self.request("take_interface_ownership", _interface_args(interface))
        self._forget_if_refused(fut, self._interfaces, interface, entry)
        return fut

    def release_interface(self, interface: Interface) -> asyncio.Future[dict[str, Any]]:
        """[MgmReleaseInterfaceOwnership] Give `interface` up; the manager deletes your memberships on it."""
        self._interfaces.pop(interface, None)
        self._boundaries.pop(interface, None)
        for key in [k for k in self._memberships if k[4] == interface]:
            del self._memberships[key]
        return self.request("release_interface_ownership", _interface_args(interface))

    def set_boundaries(
        self, interface: Interface, ranges: tuple[tuple[str, str], ...] | list[tuple[str, str]]
    ) -> asyncio.Future[dict[str, Any]]:
        """Never forward the groups in `ranges` ((group, group_mask) prefixes) out of `interface`, yours.

        Replaces the ranges you set there before (an empty list lifts them);
        they go when you release the interface.  The manager keeps the
        interface out of every OIL of a group in a range, whoever joined it
        there: an administrative filter that also holds for receivers that
        join after a flow exists, which a creation_alert veto cannot.
        """
        ranges = tuple(ranges)
        if ranges:
            self._boundaries[interface] = ranges
        else:
            self._boundaries.pop(interface, None)
        return self.request("set_boundaries", _boundary_args(interface, ranges))

    def answer(self, question: int, **fields: Any) -> asyncio.Future[dict[str, Any]]:
        """Answer a question yourself, for a hook that returned ``ANSWER_LATER``.

        `fields` are those of the question's answer on the wire: for ``rpf``
        ``if_index``, ``next_hop``, ``upstream_neighbor``; for
        ``creation_alert`` ``oil=[{"if_index", "next_hop", "enabled"}]``; for
        ``prune_alert`` ``timeout``.  An answer after the deadline is applied
        as an update.
        """
        return self.request("answer", {"question": question, **fields})

    # --- tasks ----------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` on the host's loop; its exception, if any, is logged with the plugin's name.

        The context keeps a reference until it ends; the host cancels what
        is still running when it stops (after ``mgm_stop``).
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    # --- what the host uses -------------------------------------------------------------------

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        """The interfaces taken through this context (the ledger), in the order taken."""
        return tuple(self._interfaces)

    @property
    def memberships(self) -> tuple[MembershipKey, ...]:
        """The memberships added through this context and not deleted (the ledger)."""
        return tuple(self._memberships)

    async def replay(self) -> None:
        """After a manager restart: take every ledger interface, set its boundaries, then add every membership.

        Refusals are logged, not raised: one refused entry must not stop the others.
        """
        for interface in self.interfaces:
            await quiet(self.request("take_interface_ownership", _interface_args(interface)))
        for interface, ranges in list(self._boundaries.items()):  # before the members they keep out
            await quiet(self.request("set_boundaries", _boundary_args(interface, ranges)))
        replies = [self.request("add_group_membership", _membership_args(key)) for key in self.memberships]
        for reply in replies:
            await quiet(reply)

    async def cancel_tasks(self) -> None:
        """Cancel what `spawn` started and wait until it has ended."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------------

    def _membership_key(self, source: str, group: str, interface: Interface, source_mask: str | None,
                        group_mask: str | None, flags: int) -> MembershipKey:  # fmt: skip
        source_mask = default_mask(source) if source_mask is None else source_mask
        group_mask = default_mask(group) if group_mask is None else group_mask
        return source, source_mask, group, group_mask, Interface(*interface), flags

    def _forget_if_refused(self, fut: asyncio.Future[dict[str, Any]], ledger: dict[Any, object], key: Any,
                           entry: object) -> None:  # fmt: skip
        """Drop `key` from `ledger` if the manager refuses the request that added it (as `entry`).

        Unless the refusal only says our handle is unknown (ERROR_INVALID_PARAMETER, also the status of
        a bad argument): a restarted manager, or one that dropped us, refuses every request until the
        host registers again, and the replay that follows must include this entry.  A heartbeat with
        the same handle, ordered after the request on this connection, tells which it was.
        """
        handle = self.handle

        def forget() -> None:
            if ledger.get(key) is entry:
                del ledger[key]

        def refused(f: asyncio.Future[dict[str, Any]]) -> None:
            exc = None if f.cancelled() else f.exception()
            if not isinstance(exc, MgmError):
                return  # done, or no answer (the replay settles it)
            if exc.status != Status.ERROR_INVALID_PARAMETER:
                forget()
                return
            probe = self.client.request_nowait("heartbeat", {"handle": handle})
            probe.add_done_callback(lambda p: forget() if not p.cancelled() and p.exception() is None else None)

        fut.add_done_callback(refused)

    def _log_failure(self, fut: asyncio.Future[dict[str, Any]], op: str, args: Mapping[str, Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()  # also marks it retrieved, so asyncio does not warn a second time
        if exc is not None:
            brief = " ".join(f"{k}={v}" for k, v in args.items() if k != "handle")
            self.log.warning("plugin %s: %s %s failed: %s", self.name, op, brief, exc)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("plugin %s: task %s failed", self.name, task.get_name(), exc_info=exc)


def _interface_args(interface: Interface) -> dict[str, Any]:
    return {"if_index": interface[0], "next_hop": interface[1]}


def _boundary_args(interface: Interface, ranges: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {**_interface_args(interface), "boundaries": [{"group": g, "group_mask": m} for g, m in ranges]}


def _membership_args(key: MembershipKey) -> dict[str, Any]:
    source, source_mask, group, group_mask, interface, flags = key
    return {
        "source": source,
        "source_mask": source_mask,
        "group": group,
        "group_mask": group_mask,
        **_interface_args(interface),
        "flags": flags,
    }


async def quiet(fut: asyncio.Future[dict[str, Any]]) -> None:
    """Await a request's future for its end only: a refusal or a timeout is already logged."""
    with contextlib.suppress(MgmError, TimeoutError):  # already logged by PluginContext.request
        await fut

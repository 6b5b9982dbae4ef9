"""The hooks a plugin implements: the one page a plugin author needs.

A plugin is any object (a module or a class, instantiated without arguments)
that the entry-point group ``mgm.plugins`` names, with functions marked
``@hookimpl`` whose names and arguments are among the specs below.  The
plugin host (``mgm plugin NAME``) validates it against these specs when it
loads it, so a misspelled hook or argument fails at start, not at the first
event.  An implementation may take any subset of a hook's arguments.  The
plugin object may set ``registration_name`` (a string) to be listed under
another name than its entry point's in the manager's tables.

Rules every hook follows
------------------------
* Hooks are plain functions and must return quickly.  They run on the host's
  event loop; a hook that blocks stalls every other event of the plugin.
  (``mgm_reload`` alone may be ``async def``: see there.)
* A hook never waits for the manager.  To change state it calls the context
  (``mgm.add_membership(...)``, ``mgm.request(...)``), which sends the request
  asynchronously and returns an ``asyncio.Future`` the hook may ignore (a
  refusal is logged with the plugin's name either way).  This is what makes the deadlock the RRAS
  documentation warns about (IGMP re-adding memberships inside its
  enable-IGMP callback) impossible here: the re-adds leave after the hook
  returns.  Long work goes in ``mgm.spawn(coroutine)``.
* Questions (``mgm_rpf``, ``mgm_creation_alert`` and ``mgm_prune_alert`` with
  ``member_delete=False``) are ``firstresult`` hooks: the first non-None value
  is the answer, which the host sends back before the question's deadline.
  None from every implementation means "the default", and the host answers
  with the default at once rather than letting the manager wait.  A plugin
  that needs I/O to decide returns ``ANSWER_LATER`` and answers itself with
  ``mgm.answer(question, ...)`` from a coroutine (``mgm.spawn``); past the
  deadline the manager has taken the default and applies the answer as an
  update.
* A hook that raises is logged with the plugin's name and the event; the host
  keeps running (and answers a question with the default).  So is a question
  hook returning a value of the wrong shape.
* The ``mgm`` argument is the plugin's `PluginContext` (mgm.plugins.context):
  ``name``, ``protocol``, ``handle``, ``config``, ``log``, ``client``, and
  ``request``, ``add_membership``, ``delete_membership``, ``take_interface``,
  ``release_interface``, ``answer``, ``spawn``.  Interfaces taken and
  memberships added through it are replayed by the host after a manager
  restart.
* Events of one plugin arrive in the manager's order.  Those that arrive
  before ``mgm_start`` has returned are delivered right after it.  After a
  loss the host resyncs and delivers the difference (local joins and leaves,
  IGMP enable/disable, open questions); alerts lost that way are not
  repeated.
* Addresses are dotted-quad strings; an interface is ``Interface(if_index,
  next_hop)``.

The callbacks mirror those of the RRAS Multicast Group Manager (the names in
brackets are RRAS's).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from mgm.core.types import Interface

if TYPE_CHECKING:
    from mgm.core.runtime.config import Config
    from mgm.plugins.context import PluginContext

PROJECT = "mgm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class _AnswerLater(enum.Enum):
    """The type of `ANSWER_LATER` (an enum: one value, the same after a copy or a pickle)."""

    ANSWER_LATER = "ANSWER_LATER"

    def __repr__(self) -> str:
        return "ANSWER_LATER"

    __str__ = __repr__


ANSWER_LATER = _AnswerLater.ANSWER_LATER
"""Returned by a question hook: "I will answer myself with ``mgm.answer``"; the host sends nothing."""


# --- lifecycle ---------------------------------------------------------------


@hookspec(firstresult=True)
def mgm_protocol(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """Return ``(protocol_id, component_id)`` to register with.

    Called once, before anything else, with the plugin's configuration table.
    The ``protocol_id`` and ``component_id`` keys of the configuration, where
    present, win over this hook (so an operator can run a second instance
    under another component id); a plugin that does not implement it must be
    given both keys.
    """


@hookspec
def mgm_start(mgm: PluginContext, config: Mapping[str, Any]) -> None:
    """The plugin is registered and owns the interfaces its config names.

    Set up sockets, timers and initial state here (``mgm.spawn`` for
    long-running tasks).  Called once per process; no other hook of the
    plugin runs before it (but ``mgm_protocol``).
    """


@hookspec
def mgm_replay(mgm: PluginContext) -> None:
    """The manager restarted (new epoch) and the host has registered again.

    The host has already re-taken the interfaces and replayed every
    membership the plugin added through ``mgm.add_membership``; implement
    this only for state the plugin keeps by other means.
    """


@hookspec
def mgm_stop(mgm: PluginContext) -> None:
    """The host is stopping (SIGTERM, Ctrl-C): close sockets, cancel timers.

    After it returns the host releases the interfaces and deregisters.  Also
    called when the stop comes before `mgm_start` (while the host connects
    or registers), so that what `mgm_protocol` opened is released: be ready
    for a plugin that never started.  Not called when the host exits on a
    failure (the manager unreachable, the registration refused), where a
    restart follows.
    """


@hookspec
def mgm_reload(mgm: PluginContext, config: Mapping[str, Any], whole_config: Config) -> Awaitable[None] | None:
    """SIGHUP: the host has read the configuration file again, and it loads.

    `config` is the plugin's new table (as `mgm_start` got it), `whole_config`
    the whole new file: to resolve interfaces, read other tables, and name a
    mistake's line (``whole_config.error(key, message)``).  Apply the
    difference to what is in force, through the context.  To refuse, raise
    `ConfigError` (`Mistakes` for several) before changing anything: the
    host logs each mistake with its file and line, and what is in force
    stays.  May be ``async def`` (work that awaits the manager): the host
    awaits it before the next reload, so two quick SIGHUPs apply one after
    the other.  Not called for a file that does not load (the host logs it),
    nor for a configuration given without a file.  Never re-read the file
    nor install a SIGHUP handler of your own; the keys the host reads
    (``interfaces``, ``protocol_id``, ``component_id``) take effect at the
    next start.  A plugin without this hook ignores SIGHUP.
    """


# --- interface ownership under IGMP ------------------------------------------


@hookspec
def mgm_disable_igmp(mgm: PluginContext, interface: Interface) -> None:
    """[PMGM_DISABLE_IGMP_CALLBACK] Stop adding or deleting memberships on `interface`.

    Sent to IGMP only, just before a routing protocol takes or releases an
    interface that IGMP also owns.  IGMP's memberships stay in place.
    """


@hookspec
def mgm_enable_igmp(mgm: PluginContext, interface: Interface) -> None:
    """[PMGM_ENABLE_IGMP_CALLBACK] Add all your memberships on `interface` again.

    Sent to IGMP right after the ownership change.  Re-add with ordinary
    calls (``mgm.add_membership``); they leave after this hook returns.  A
    re-add of an existing membership changes nothing in the manager but
    tells the new owner about the receivers (a local join).
    """


# --- local membership (IGMP beside a routing protocol) ------------------------


@hookspec
def mgm_local_join(
    mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, interface: Interface
) -> None:
    """[PMGM_LOCAL_JOIN_CALLBACK] IGMP added a membership on an interface you own."""


@hookspec
def mgm_local_leave(
    mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, interface: Interface
) -> None:
    """[PMGM_LOCAL_LEAVE_CALLBACK] IGMP deleted a membership on an interface you own."""


# --- alerts ---------------------------------------------------------------------


@hookspec
def mgm_join_alert(
    mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str, member_update: bool
) -> None:
    """[PMGM_JOIN_ALERT_CALLBACK] Receivers appeared for (source, group).

    ``member_update=True``: a client's first membership for the group
    (the (*,G) and (S,G) rules of the MGM).  ``member_update=False``: an MFE
    whose incoming interface you own went from an empty to a non-empty
    outgoing interface list.
    """


@hookspec(firstresult=True)
def mgm_prune_alert(
    mgm: PluginContext,
    source: str,
    source_mask: str,
    group: str,
    group_mask: str,
    interface: Interface,
    member_delete: bool,
    question: int | None,
) -> float | _AnswerLater | None:
    """[PMGM_PRUNE_ALERT_CALLBACK] Receivers went away for (source, group).

    With ``member_delete=False`` an MFE whose incoming interface you own has
    an empty outgoing list; it is a question (`question` is its id, None
    otherwise): return a timeout in seconds to keep the negative MFE that
    long (None keeps the manager's default).
    """


@hookspec
def mgm_wrong_if(mgm: PluginContext, source: str, group: str, interface: Interface) -> None:
    """[PMGM_WRONG_IF_CALLBACK] A packet of (source, group) arrived on `interface`, which you own,
    but the MFE's incoming interface is another one (PIM asserts need this)."""


# --- questions --------------------------------------------------------------------


@hookspec(firstresult=True)
def mgm_rpf(
    mgm: PluginContext, source: str, group: str, interface: Interface, upstream_neighbor: str, question: int
) -> tuple[Interface, str] | _AnswerLater | None:
    """[PMGM_RPF_CALLBACK] The RPF check for a new (source, group).

    `interface` is the manager's choice of incoming interface (the route
    towards the source, else the arrival interface), which you own.  Return
    ``(incoming_interface, upstream_neighbor)`` to change it, or None to agree.
    `question` is the id ``mgm.answer`` needs after ``ANSWER_LATER``.
    A plugin without this hook is never asked (the host says so at
    registration): the manager keeps its choice without a round trip.
    """


@hookspec(firstresult=True)
def mgm_creation_alert(
    mgm: PluginContext,
    source: str,
    group: str,
    in_interface: Interface,
    oil: Sequence[Interface],
    question: int,
) -> Mapping[Interface, bool] | _AnswerLater | None:
    """[PMGM_CREATION_ALERT_CALLBACK] A new MFE will forward out of `oil`, your interfaces.

    Return ``{interface: enabled}`` to disable some of them (interfaces you
    leave out stay enabled), or None to enable all.  A plugin without this
    hook is never asked: every interface of its own is enabled at once.
    """


# --- the state stream (observers, the forwarder) -------------------------------------


@hookspec
def mgm_state_event(mgm: PluginContext, event: Mapping[str, Any]) -> None:
    """A change on the ``state`` stream (``mfe_created``, ``membership_added``, ...).

    The host subscribes to ``state`` only for plugins that implement this
    hook.  Events arrive in order with no gap: after a loss the host resyncs
    and calls ``mgm_state_resync`` before the next event.
    """


@hookspec
def mgm_state_resync(mgm: PluginContext, state: Mapping[str, Any]) -> None:
    """The whole state from a ``sync`` snapshot (at start, after a gap, after a
    manager restart): ``protocols``, ``interfaces``, ``memberships``, ``mfes``.
    Replace what you mirrored with it."""

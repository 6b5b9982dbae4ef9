"""What a SIGHUP reload of ``[plugins.proxy]`` changes, without any I/O.

The filters, ``forward_upstream`` and ``immediate_report`` are applied to
the running proxy.  The interfaces (``upstream``, the set of ``downstream``
interfaces) are not: the host took them, IGMP runs on the downstream ones
from its own table, and the forwarder and the manager hold state per
interface, so changing them is a restart's job.  A reload that changes
them is refused as a whole (nothing of the new file applies), naming the
keys, so what is in force is always exactly one file's settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mgm.plugins.proxy.merge import ALL, GroupFilter
from mgm.plugins.proxy.settings import Name, Settings

RESTART_HINT = "restart the proxy to change its interfaces"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A key whose change a reload cannot apply: its key path (in ``plugins.NAME``) and why."""

    key: str
    message: str


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The difference between the settings in force and a new file's."""

    refused: tuple[Refusal, ...] = ()
    filters: Mapping[Name, GroupFilter] = field(default_factory=dict)
    """The downstream interfaces whose filter changed, and their new filter."""
    forward_upstream: bool | None = None
    """The new value where it changed, else None."""
    immediate_report: bool | None = None

    @property
    def changes_nothing(self) -> bool:
        return not self.filters and self.forward_upstream is None and self.immediate_report is None

    def summary(self) -> str:
        parts = [f"filter of {_shown(name)} now {f.describe()}" for name, f in self.filters.items()]
        for key, value in (("forward_upstream", self.forward_upstream), ("immediate_report", self.immediate_report)):
            if value is not None:
                parts.append(f"{key} {'on' if value else 'off'}")
        return "; ".join(parts) or "nothing changed"


def plan_reload(old: Settings, new: Settings, name: str = "proxy", *, creation_alerts: bool = True) -> ReloadPlan:
    """What to apply to go from `old` to `new`; `refused` non-empty when the reload must not apply at all.

    `creation_alerts`: whether the manager asks this proxy creation alerts (it registered with
    ``forward_upstream`` on); without them ``forward_upstream`` cannot be turned on by a reload.
    """
    refused: list[Refusal] = []
    prefix = f"plugins.{name}"
    if new.forward_upstream and not old.forward_upstream and not creation_alerts:
        refused.append(Refusal(f"{prefix}.forward_upstream",
                               "turning forward_upstream on needs a restart of the proxy: it started without it, "
                               "so it told the manager it answers no creation alert, and those keep the flows "
                               "of other protocols' interfaces out of the upstream"))  # fmt: skip
    if new.upstream != old.upstream:
        refused.append(Refusal(f"{prefix}.upstream",
                               f"the upstream changed from {_shown(old.upstream)} to {_shown(new.upstream)}: "
                               f"{RESTART_HINT}"))  # fmt: skip
    added = [d for d in new.downstream if d not in old.downstream]
    removed = [d for d in old.downstream if d not in new.downstream]
    if added or removed:
        what = [f"{_shown(d)} added" for d in added] + [f"{_shown(d)} removed" for d in removed]
        refused.append(Refusal(f"{prefix}.downstream", f"the downstream interfaces changed ({', '.join(what)}): "
                                                       f"{RESTART_HINT}"))  # fmt: skip
    if refused:
        return ReloadPlan(refused=tuple(refused))
    filters = {
        iface: new.filters.get(iface, ALL)
        for iface in new.downstream
        if new.filters.get(iface, ALL) != old.filters.get(iface, ALL)
    }
    return ReloadPlan(
        filters=filters,
        forward_upstream=None if new.forward_upstream == old.forward_upstream else new.forward_upstream,
        immediate_report=None if new.immediate_report == old.immediate_report else new.immediate_report,
    )


def _shown(name: Name) -> str:
    return repr(name) if isinstance(name, str) else f"if_index {name}"

"""Chaos: membership churn from several plugins while plugins and the manager are SIGKILLed and restarted.

Four recorder plugins (tests/plugins): test-igmp (protocol 10) on 11 and 13,
two routing protocols owning 11+12 and 13+14 (so IGMP shares an interface
with each), and an observer following the `state` stream.  A seeded random
run adds and deletes memberships through the plugins' control sockets, and
at steps drawn from the same seed SIGKILLs a plugin (then starts it again,
as `mgm up` would) or the manager (then starts a new one on the same
endpoints).  Requests that meet a dead or new manager may be refused; that
is allowed, losing what a live plugin holds is not.  At the end, within a
deadline, every view agrees with the manager's state:

* each live plugin's ledger (what its context replays) equals the manager's
  interfaces and memberships for that client: nothing it holds was lost,
  nothing it dropped lingers;
* each routing plugin's local members, folded from its local_join and
  local_leave calls, equal IGMP's memberships on its interfaces;
* the observer's memberships, folded from its resyncs and state events,
  equal the manager's.

The seed is printed; MGM_CHAOS_SEED=N repeats a run.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from typing import Any

from mgm_testplugins.control import ControlError, wait_for
from mgm_testplugins.processes import ManagerProc, PluginProc

IGMP = 10
PLUGINS: dict[str, dict[str, Any]] = {
    "test-igmp": {"interfaces": [11, 13]},
    "test-routing-a": {"protocol_id": 100, "component_id": 1, "interfaces": [11, 12]},
    "test-routing-b": {"protocol_id": 101, "component_id": 1, "interfaces": [13, 14]},
    "test-observer": {"protocol_id": 102, "component_id": 1},
}
PROTOCOL = {"test-igmp": (IGMP, 1), "test-routing-a": (100, 1), "test-routing-b": (101, 1), "test-observer": (102, 1)}
MEMBERS = ("test-igmp", "test-routing-a", "test-routing-b")
STEPS = 260
PLUGIN_KILLS, MANAGER_KILLS = 3, 2
GROUPS = [f"239.9.0.{i}" for i in range(12)]
SOURCES = ["0.0.0.0", "0.0.0.0", "10.0.0.1", "10.0.0.2"]
CONVERGE = 30.0

Member = tuple[str, str, str, str, int, str]
"""(source, source_mask, group, group_mask, if_index, next_hop)."""


def manager_state(manager: ManagerProc) -> dict[str, Any] | None:
    try:
        result = manager.request("sync", {"stream": "state"}, timeout=2.0)
    except TimeoutError:
        return None
    assert not result.get("more")
    state: dict[str, Any] = result["state"]
    return state


def of(state: dict[str, Any], protocol: tuple[int, int]) -> tuple[set[int], set[Member]]:
    """The interfaces `protocol` owns (or shares, for IGMP) and its memberships, in the manager's state."""
    pid, cid = protocol
    owner = {"protocol_id": pid, "component_id": cid}
    ifaces = {i["if_index"] for i in state["interfaces"] if i["owner"] == owner or (pid == IGMP and i["igmp"])}
    members = {(m["source"], m["source_mask"], m["group"], m["group_mask"], m["if_index"], m["next_hop"])
               for m in state["memberships"] if (m["protocol_id"], m["component_id"]) == protocol}  # fmt: skip
    return ifaces, members


def ledger(proc: PluginProc) -> tuple[set[int], set[Member]] | None:
    assert proc.control is not None
    try:
        got = proc.control.call("ledger")
    except TimeoutError:
        return None
    members = {(s, sm, g, gm, iface[0], iface[1]) for s, sm, g, gm, iface, _flags in got["memberships"]}
    return {i for i, _nh in got["interfaces"]}, members


def folded_local_members(proc: PluginProc) -> set[Member]:
    """What local_join and local_leave told this routing plugin, in order."""
    assert proc.control is not None
    members: set[Member] = set()
    for call in proc.control.calls():
        if call["hook"] in ("mgm_local_join", "mgm_local_leave"):
            key = (call["source"], call["source_mask"], call["group"], call["group_mask"], *call["interface"])
            (members.add if call["hook"] == "mgm_local_join" else members.discard)(key)
    return members


def folded_state(proc: PluginProc) -> set[tuple[Any, ...]]:
    """The observer's memberships: the last resync, then every state event after it."""
    assert proc.control is not None
    members: set[tuple[Any, ...]] = set()

    def key(m: dict[str, Any]) -> tuple[Any, ...]:
        return (m["protocol_id"], m["component_id"], m["source"], m["group"], m["if_index"])

    for call in proc.control.calls():
        if call["hook"] == "mgm_state_resync":
            members = {key(m) for m in call["state"]["memberships"]}
        elif call["hook"] == "mgm_state_event" and call["event"]["type"] in ("membership_added", "membership_deleted"):
            (members.add if call["event"]["type"] == "membership_added" else members.discard)(key(call["event"]))
    return members


def disagreements(manager: ManagerProc, plugins: dict[str, PluginProc]) -> list[str]:
    """Every view that does not match the manager's state (empty when all agree)."""
    state = manager_state(manager)
    if state is None:
        return ["the manager does not answer"]
    out = []
    for name in MEMBERS:
        held = ledger(plugins[name])
        if held is None:
            out.append(f"{name} does not answer")
        elif held != of(state, PROTOCOL[name]):
            out.append(f"{name}: ledger {sorted(held[1])} / {held[0]} != manager {of(state, PROTOCOL[name])}")
    _, igmp_members = of(state, PROTOCOL["test-igmp"])
    for name in ("test-routing-a", "test-routing-b"):
        owned, _ = of(state, PROTOCOL[name])
        expected = {m for m in igmp_members if m[4] in owned}
        folded = folded_local_members(plugins[name])
        if folded != expected:
            odd = folded ^ expected
            history = [f"  {c['hook']} {c.get('source')} {c.get('group')} {c.get('interface')}"
                       for c in plugins[name].control.calls()
                       if c["hook"] in ("mgm_start", "mgm_replay") or any(
                           (c.get("source"), c.get("group")) == (k[0], k[2]) for k in odd)]  # fmt: skip
            out.append(f"{name}: local members differ from IGMP's on its interfaces in {sorted(odd)}; its calls:\n"
                       + "\n".join(history))  # fmt: skip
    truth = {(m["protocol_id"], m["component_id"], m["source"], m["group"], m["if_index"])
             for m in state["memberships"]}  # fmt: skip
    if folded_state(plugins["test-observer"]) != truth:
        out.append("test-observer: its state view differs from the manager's")
    return out


def test_chaos_churn_with_plugins_and_the_manager_killed_ends_with_every_view_agreeing(
    start_manager: Callable[..., ManagerProc], start_plugin: Callable[..., PluginProc]
) -> None:
    seed = int(os.environ.get("MGM_CHAOS_SEED") or random.randrange(2**32))
    print(f"\nchaos seed {seed} (MGM_CHAOS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    manager = start_manager()
    plugins = {name: start_plugin(name, table) for name, table in PLUGINS.items()}
    kills = rng.sample(range(10, STEPS - 10), PLUGIN_KILLS + MANAGER_KILLS)
    plugin_kills, manager_kills = set(kills[:PLUGIN_KILLS]), set(kills[PLUGIN_KILLS:])
    counts = {"added": 0, "deleted": 0, "refused": 0, "timeouts": 0, "plugin kills": 0, "manager kills": 0}
    added: dict[str, list[dict[str, Any]]] = {name: [] for name in MEMBERS}

    for step in range(STEPS):
        if step in manager_kills:
            manager.send_signal(signal.SIGKILL)
            manager.wait(10)
            manager = start_manager()
            counts["manager kills"] += 1
            continue
        if step in plugin_kills:
            name = rng.choice(sorted(PLUGINS))
            victim = plugins[name]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            assert victim.control is not None
            victim.control.close()
            plugins[name] = start_plugin(name, PLUGINS[name])  # waits until it registered again
            if name in added:
                added[name] = []  # the new instance holds nothing yet
            counts["plugin kills"] += 1
            continue
        name = rng.choice(MEMBERS)
        control = plugins[name].control
        assert control is not None
        if added[name] and rng.random() < 0.35:
            args = added[name].pop(rng.randrange(len(added[name])))
            cmd = "delete_membership"
        else:
            args = {"source": rng.choice(SOURCES), "group": rng.choice(GROUPS),
                    "if_index": rng.choice(PLUGINS[name]["interfaces"])}  # fmt: skip
            cmd = "add_membership"
        try:
            control.call(cmd, **args)
            counts["added" if cmd == "add_membership" else "deleted"] += 1
            if cmd == "add_membership":
                added[name].append(args)
        except ControlError:
            counts["refused"] += 1  # a duplicate, a delete of nothing, or a manager that restarted meanwhile
        except TimeoutError:
            counts["timeouts"] += 1

    print(f"chaos: {counts}")
    assert counts["added"] > STEPS // 3
    for name, proc in plugins.items():
        assert proc.alive(), f"{name} died:\n{proc.log()}"
    assert manager.alive(), manager.log()
    last: list[list[str]] = [[]]

    def agreed() -> bool:
        last[0] = disagreements(manager, plugins)
        return not last[0]

    try:
        wait_for(agreed, CONVERGE, "every view to agree with the manager")
    except TimeoutError:
        raise AssertionError(f"seed {seed}: views still disagree:\n" + "\n".join(last[0])) from None
    state = manager_state(manager)
    assert state is not None and state["memberships"], "the run should end with memberships to compare"

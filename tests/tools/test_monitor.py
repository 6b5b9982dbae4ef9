"""`mgm monitor` as a process against a live `mgm manager`, with events made by the recorder test plugins.

Every monitor is first waited for until it printed the first snapshot of
each stream the test looks at: from then on it shows that stream's events,
so what it must print is known exactly.  Before a test compares a monitor's
output with what it expects, it waits until the monitor has caught up with
the manager's own last seq of each stream (from `sync`), so "not printed
yet" cannot pass for "filtered out".
"""

from __future__ import annotations

import ipaddress
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from mgm_testplugins.control import ctl, wait_for
from mgm_testplugins.processes import ManagerProc, PluginProc
from tool_procs import ANY, FAR, LO, A, DroppingRelay, MonitorProc

StartPlugin = Callable[..., PluginProc]
StartMonitor = Callable[..., MonitorProc]

IGMP_STREAM, A_STREAM = "proto/10/1", "proto/100/1"
QUIET = ("--rate-interval", "0")


def new_packet(plugin: PluginProc, source: str, group: str, if_index: int) -> None:
    ctl(plugin).call("request", op="new_packet",
                     args={"source": source, "group": group, "if_index": if_index, "next_hop": ANY})  # fmt: skip


def last_seqs(manager: ManagerProc, streams: Iterable[str]) -> dict[str, int]:
    """The manager's own last seq of each stream."""
    return {s: int(manager.request("sync", {"stream": s})["seq"]) for s in streams}


def caught_up(mon: MonitorProc, seqs: dict[str, int]) -> None:
    """Wait until the monitor has received every stream up to the manager's seq (shown or not)."""

    def done() -> bool:
        got: dict[str, int] = {}
        for r in mon.records():
            if "monitor" not in r or r["monitor"] == "snapshot":
                got[r["stream"]] = max(got.get(r["stream"], 0), r["seq"])
        return all(got.get(s, 0) >= seq for s, seq in seqs.items())

    wait_for(done, 15, f"{mon.name} to reach {seqs}")


def summary(mon: MonitorProc) -> dict[str, Any]:
    rc = mon.stop()
    assert rc == 0, f"the monitor exited with {rc}:\n{mon.log()}"
    records = mon.records()
    assert records[-1]["monitor"] == "summary", mon.log()
    return records[-1]


def group_of(ev: dict[str, Any]) -> str | None:
    return ev.get("group", ev.get("mfe", {}).get("group"))


def test_monitor_prints_the_events_in_order(
    manager: ManagerProc, start_plugin: StartPlugin, start_monitor: StartMonitor
) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [LO]})
    a = start_plugin("test-routing-a", A | {"interfaces": [LO, FAR]})
    mj = start_monitor("--json", *QUIET)
    mt = start_monitor("--rate-interval", "0.5")
    mc = start_monitor("--json", *QUIET, "--count", "2", "--type", "membership_added")
    first = {s: mj.wait_synced(s) for s in ("state", IGMP_STREAM, A_STREAM)}
    mc.wait_synced()
    text_snapshot = mt.wait_line(lambda line: " state SNAPSHOT at seq " in line, "the text snapshot of state")
    s0 = first["state"]["seq"]
    assert int(text_snapshot.split(" at seq ")[1].split(":")[0]) == s0  # nothing happened in between

    ctl(igmp).join("239.1.1.1", LO)
    ctl(igmp).join("239.1.1.2", LO)
    ctl(igmp).leave("239.1.1.2", LO)
    new_packet(a, "10.9.9.9", "239.1.1.1", FAR)
    seqs = last_seqs(manager, ["state", IGMP_STREAM, A_STREAM])
    assert seqs["state"] == s0 + 4
    caught_up(mj, seqs)

    events = mj.events()
    state = [e for e in events if e["stream"] == "state"]
    assert [(e["seq"], e["type"], group_of(e)) for e in state] == [
        (s0 + 1, "membership_added", "239.1.1.1"),
        (s0 + 2, "membership_added", "239.1.1.2"),
        (s0 + 3, "membership_deleted", "239.1.1.2"),
        (s0 + 4, "mfe_created", "239.1.1.1"),
    ]
    assert all(e["v"] == 1 and e["epoch"] == first["state"]["epoch"] for e in events)
    for stream, snap in first.items():  # every stream: consecutive from its snapshot to the manager's last seq
        assert [e["seq"] for e in events if e["stream"] == stream] == list(range(snap["seq"] + 1, seqs[stream] + 1))
    assert any(e["stream"] == A_STREAM and e["type"] == "local_join" for e in events)  # IGMP's join told to the owner
    mfe = state[-1]["mfe"]  # the event as received: the whole MFE is there
    assert (mfe["source"], mfe["in_if_index"], [o["if_index"] for o in mfe["oil"]]) == ("10.9.9.9", FAR, [LO])
    assert state[0] == {"v": 1, "stream": "state", "seq": s0 + 1, "epoch": first["state"]["epoch"],
                        "type": "membership_added", "protocol_id": 10, "component_id": 1, "source": ANY,
                        "source_mask": ANY, "group": "239.1.1.1", "group_mask": "255.255.255.255",
                        "if_index": LO, "next_hop": ANY, "flags": 1}  # fmt: skip

    # the text form: one line per event with the key fields, and a rate line that counted them
    wanted = [
        f"state #{s0 + 1} membership_added protocol=10/1 if={LO}(lo) source=* group=239.1.1.1",
        f"state #{s0 + 3} membership_deleted protocol=10/1 if={LO}(lo) source=* group=239.1.1.2",
        f"state #{s0 + 4} mfe_created source=10.9.9.9 group=239.1.1.1 iif={FAR} oil={LO}(lo)",
    ]
    for line in wanted:
        mt.wait_line(lambda got, line=line: got.split(" ", 1)[1] == line, repr(line))
    mt.wait_line(lambda got: " RATE over 0.5 s: " in got and " state " in got, "a rate line with the state stream")

    assert mc.wait(30) == 0  # --count 2: it ended by itself after the second membership_added
    assert [e["seq"] for e in mc.events()] == [s0 + 1, s0 + 2]
    assert mc.records()[-1]["monitor"] == "summary" and mc.records()[-1]["shown"] == 2

    result = summary(mj)
    assert (result["events"], result["shown"], result["gaps"], result["resyncs"]) == (len(events), len(events), 0, 0)
    assert result["streams"]["state"] == 4
    assert mt.stop(signal.SIGINT) == 0
    assert " SUMMARY " in mt.lines()[-1] and "0 gap(s)" in mt.lines()[-1]


def test_monitor_filters(manager: ManagerProc, start_plugin: StartPlugin, start_monitor: StartMonitor) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [LO, FAR + 1]})
    a = start_plugin("test-routing-a", A | {"interfaces": [LO, FAR]})
    everything = start_monitor("--json", *QUIET)
    net = ipaddress.IPv4Network("239.1.2.0/24")

    def interfaces(e: dict[str, Any]) -> set[int]:
        found = set()
        for d in (e, e.get("mfe", {})):
            found |= {d[k] for k in ("if_index", "in_if_index") if k in d}
            found |= {o["if_index"] for o in d.get("oil", [])}
        return found

    cases: list[tuple[list[str], Callable[[dict[str, Any]], bool]]] = [
        (["--type", "membership_added", "--type", "mfe_created"],
         lambda e: e["type"] in ("membership_added", "mfe_created")),
        (["--interface", "lo"], lambda e: LO in interfaces(e)),
        (["--group", str(net)], lambda e: group_of(e) is not None and ipaddress.IPv4Address(group_of(e)) in net),
        (["--source", "10.9.9.9"], lambda e: e.get("source", e.get("mfe", {}).get("source")) == "10.9.9.9"),
        (["--topic", "proto/100/"], lambda e: e["stream"].startswith("proto/100/")),
        (["--type", "membership_added", "--group", "239.1.2.1"],
         lambda e: e["type"] == "membership_added" and group_of(e) == "239.1.2.1"),
    ]  # fmt: skip
    monitors = [start_monitor("--json", *QUIET, *args) for args, _ in cases]
    streams = ("state", IGMP_STREAM, A_STREAM)
    for mon in [everything, *monitors]:
        for stream in streams:
            if mon is not monitors[4] or stream == A_STREAM:
                mon.wait_synced(stream)

    ctl(igmp).join("239.1.1.1", LO)
    ctl(igmp).join("239.1.2.1", FAR + 1)
    ctl(igmp).join("239.1.2.2", LO, source="10.9.9.9")
    new_packet(a, "10.9.9.9", "239.1.1.1", FAR)
    new_packet(a, "10.9.9.8", "239.1.2.1", FAR)
    ctl(igmp).leave("239.1.1.1", LO)
    caught_up(everything, last_seqs(manager, streams))
    reference = everything.events()

    counts = Counter(e["stream"] for e in reference)
    for mon, (args, predicate) in zip(monitors, cases, strict=True):
        expected = [e for e in reference if predicate(e)]
        assert expected and len(expected) < len(reference), f"{args} must select some events, not all"
        wait_for(lambda mon=mon, expected=expected: mon.events() == expected, 15, f"monitor {args} to show {expected}")
        received = summary(mon)["streams"]  # stopped: its output is complete now
        assert mon.events() == expected, f"monitor {args}"
        # it received (and counted) every event of its streams, so the ones it did not show were filtered out
        assert received == ({A_STREAM: counts[A_STREAM]} if "--topic" in args else counts), f"monitor {args}"


def test_monitor_reports_a_gap_and_resyncs(
    manager: ManagerProc, start_plugin: StartPlugin, start_monitor: StartMonitor, relay: DroppingRelay
) -> None:
    """The relay loses two state events; the monitor says which seqs it did not see, resyncs, and ends right."""
    igmp = start_plugin("test-igmp", {"interfaces": [FAR]})
    mon = start_monitor("--json", *QUIET, "--topic", "state", events=relay.endpoint)
    s0 = mon.wait_synced()["seq"]
    relay.drop.update({s0 + 2, s0 + 3})
    groups = [f"239.3.3.{i}" for i in range(1, 5)]
    for group in groups:
        ctl(igmp).join(group, FAR)
    mon.wait_record(lambda r: r.get("monitor") == "snapshot" and r["reason"] == "gap", "a resync snapshot")
    ctl(igmp).join("239.3.3.5", FAR)
    truth = manager.request("sync", {"stream": "state"})
    caught_up(mon, {"state": truth["seq"]})
    assert relay.dropped == [s0 + 2, s0 + 3]

    # Replay the output as a subscriber would: events in seq order, a gap then a snapshot at the gap's end.
    records = [r for r in mon.records() if r.get("monitor") in (None, "gap", "snapshot")]
    assert records[0]["reason"] == "first"
    seq, members = s0, {m["group"] for m in records[0]["state"]["memberships"]}
    missing: set[int] = set()
    gaps = 0
    for i, r in enumerate(records[1:], 1):
        if r.get("monitor") == "gap":
            gaps += 1
            assert r["stream"] == "state" and r["first"] == seq + 1 and r["last"] > seq
            nxt = records[i + 1]
            assert nxt["monitor"] == "snapshot" and nxt["reason"] == "gap" and nxt["seq"] == r["last"]
            missing.update(range(r["first"], r["last"] + 1))
        elif r.get("monitor") == "snapshot":
            assert records[i - 1].get("monitor") == "gap"
            seq, members = r["seq"], {m["group"] for m in r["state"]["memberships"]}
        else:
            assert r["seq"] == seq + 1 and r["type"] == "membership_added"
            seq = r["seq"]
            members.add(r["group"])
    assert gaps >= 1 and {s0 + 2, s0 + 3} <= missing
    assert seq == truth["seq"]
    assert members == {m["group"] for m in truth["state"]["memberships"]} == {*groups, "239.3.3.5"}
    result = summary(mon)
    assert (result["gaps"], result["resyncs"], result["missed"]) == (gaps, gaps, len(missing))


def test_monitor_resyncs_after_a_manager_restart(
    start_manager: Callable[..., ManagerProc], start_plugin: StartPlugin, start_monitor: StartMonitor,
    manager: ManagerProc,
) -> None:  # fmt: skip
    old_epoch = manager.request("ping")["epoch"]
    mon = start_monitor("--json", *QUIET)
    assert mon.wait_synced()["epoch"] == old_epoch
    manager.stop()
    restarted = start_manager()  # the same endpoints, a new epoch
    new_epoch = restarted.request("ping")["epoch"]
    assert new_epoch != old_epoch
    note = mon.wait_record(lambda r: r.get("monitor") == "epoch", "the epoch line")
    assert (note["old"], note["new"]) == (old_epoch, new_epoch)
    snap = mon.wait_record(lambda r: r.get("monitor") == "snapshot" and r["reason"] == "epoch", "the resync")
    assert (snap["stream"], snap["epoch"]) == ("state", new_epoch)
    start_plugin("test-igmp", {"interfaces": [FAR]})  # registers with the new manager
    registered = mon.wait_record(lambda r: r.get("type") == "protocol_registered", "the registration")
    assert (registered["epoch"], registered["seq"]) == (new_epoch, snap["seq"] + 1)
    assert summary(mon)["resyncs"] >= 1


def test_monitor_without_a_manager(start_monitor: StartMonitor, ipc_dir: Any) -> None:
    api = f"ipc://{ipc_dir}/nothing"
    mon = start_monitor("--timeout", "0.5", api=api)
    assert mon.wait(60) == 1
    assert mon.output() == ""
    err = mon.log().split("--- stderr ---\n", 1)[1]
    assert err.splitlines() == [f"mgm monitor: no manager answers on {api}: is `mgm up` (or `mgm manager`) running? "
                                f"(there is no socket {ipc_dir}/nothing)"]  # fmt: skip

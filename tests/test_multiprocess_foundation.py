"""The foundation end to end: `mgm manager` and three or more `mgm plugin` processes.

The plugins are the recorder test plugins (tests/plugins): an IGMP-like one
(protocol 10) and two routing protocols (100/1 and 101/1).  Interfaces are
plain indexes (the manager does not look at the kernel's interfaces).  Each
test waits for what it expects with a deadline and, where it claims that
something did NOT happen, first waits for a later event on the same stream
(events of one stream arrive in order), so "not yet" cannot pass for "never".
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from mgm_testplugins.control import ControlError, ctl, wait_for
from mgm_testplugins.processes import ManagerProc, PluginProc

from mgm.bus.codec import pack
from mgm.bus.status import MgmError, Status

StartPlugin = Any

A = {"protocol_id": 100, "component_id": 1}
B = {"protocol_id": 101, "component_id": 1}
ANY = "0.0.0.0"
G1, G2, G3 = "239.1.1.1", "239.2.2.2", "239.3.3.3"
S = "10.9.9.9"
SG = "232.1.1.1"


INVALID = Status.ERROR_INVALID_PARAMETER


def request(req_id: int, op: str, args: dict[str, Any]) -> list[bytes]:
    return [b"", pack({"v": 1, "id": req_id, "op": op, "args": args})]


def hooks(plugin: PluginProc, *names: str) -> list[dict[str, Any]]:
    return [c for c in ctl(plugin).calls() if c["hook"] in names]


def enumerate_groups(plugin: PluginProc) -> list[tuple[str, str]]:
    """Every (source, group) joined anywhere, as the manager's group enumeration lists them."""
    c = ctl(plugin)
    enum = c.call("request", op="group_enumeration_start", args={"type": "all_sources"})["result"]["enum"]
    entries: list[tuple[str, str]] = []
    while True:
        try:
            page = c.call("request", op="group_enumeration_next", args={"enum": enum, "max_entries": 100})["result"]
        except ControlError as exc:
            if exc.status != Status.ERROR_NO_MORE_ITEMS:
                raise
            break
        entries += [(e["source"], e["group"]) for e in page["entries"]]
        if not page["more"]:
            break
    c.call("request", op="group_enumeration_end", args={"enum": enum})
    return entries


def owner(manager: ManagerProc, if_index: int) -> tuple[int, int] | None:
    try:
        r = manager.request("get_protocol_on_interface", {"if_index": if_index, "next_hop": ANY})
    except MgmError as exc:
        assert exc.status == Status.ERROR_NOT_FOUND
        return None
    return r["protocol_id"], r["component_id"]


# --- ownership under IGMP ---------------------------------------------------------------------


def test_take_and_release_under_igmp_readds_from_the_enable_hook(manager: ManagerProc,
                                                                 start_plugin: StartPlugin) -> None:  # fmt: skip
    igmp = start_plugin("test-igmp", {"interfaces": [11]})
    a = start_plugin("test-routing-a", A)
    b = start_plugin("test-routing-b", B)
    ctl(igmp).join(G1, 11)
    ctl(igmp).join(SG, 11, source=S)

    ctl(a).call("take", if_index=11)  # IGMP is told disable, then enable, and re-adds from the enable hook
    ctl(a).wait_for_call("mgm_local_join", group=SG, source=S, interface=[11, ANY])
    ctl(a).wait_for_call("mgm_local_join", group=G1, source=ANY, interface=[11, ANY])
    readds = wait_for(lambda: len(hooks(igmp, "readd_result")) >= 2 and hooks(igmp, "readd_result"), 10, "re-adds")
    assert [r["error"] for r in readds] == [None, None]
    sequence = [c["hook"] for c in hooks(igmp, "mgm_disable_igmp", "mgm_enable_igmp", "readd_result")]
    assert sequence == ["mgm_disable_igmp", "mgm_enable_igmp", "readd_result", "readd_result"]
    assert owner(manager, 11) == (100, 1)

    ctl(a).call("release", if_index=11)  # the same dance the other way; IGMP is alone again
    wait_for(lambda: len(hooks(igmp, "readd_result")) == 4, 10, "the second round of re-adds")
    assert all(r["error"] is None for r in hooks(igmp, "readd_result"))
    assert owner(manager, 11) == (10, 1)

    ctl(b).call("take", if_index=11)  # the new owner learns the receivers from IGMP's re-adds
    ctl(b).wait_for_call("mgm_local_join", group=G1, interface=[11, ANY])
    ctl(b).wait_for_call("mgm_local_join", group=SG, source=S, interface=[11, ANY])
    assert sorted(enumerate_groups(b)) == [(ANY, G1), (S, SG)]  # the memberships never went away
    assert len(hooks(a, "mgm_local_join")) == 2  # nothing for the old owner


# --- local join and leave -----------------------------------------------------------------------


def test_local_join_and_leave_reach_only_the_owner(manager: ManagerProc, start_plugin: StartPlugin) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [12, 13]})
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    b = start_plugin("test-routing-b", B | {"interfaces": [13]})

    ctl(igmp).join(G1, 13)
    ctl(b).wait_for_call("mgm_local_join", group=G1, interface=[13, ANY])
    ctl(igmp).join(G2, 12)
    ctl(a).wait_for_call("mgm_local_join", group=G2, interface=[12, ANY])  # after G1 on A's stream, if any
    ctl(igmp).join(G3, 13)
    ctl(b).wait_for_call("mgm_local_join", group=G3, interface=[13, ANY])  # after G2 on B's stream, if any
    assert [c["group"] for c in hooks(a, "mgm_local_join")] == [G2]
    assert [c["group"] for c in hooks(b, "mgm_local_join")] == [G1, G3]

    ctl(igmp).leave(G1, 13)
    ctl(b).wait_for_call("mgm_local_leave", group=G1, interface=[13, ANY])
    ctl(igmp).leave(G2, 12)
    ctl(a).wait_for_call("mgm_local_leave", group=G2, interface=[12, ANY])
    assert [c["group"] for c in hooks(a, "mgm_local_leave")] == [G2]
    assert [c["group"] for c in hooks(b, "mgm_local_leave")] == [G1]
    assert hooks(igmp, "mgm_local_join", "mgm_local_leave") == []  # IGMP is never told of its own


# --- join and prune alerts --------------------------------------------------------------------------


def test_join_and_prune_alerts_follow_the_star_g_rules(manager: ManagerProc, start_plugin: StartPlugin) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": []})
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    b = start_plugin("test-routing-b", B | {"interfaces": [13]})

    def alerts(plugin: PluginProc) -> list[tuple[str, bool]]:
        return [(c["hook"], c.get("member_update", c.get("member_delete"))) for c in
                hooks(plugin, "mgm_join_alert", "mgm_prune_alert") if c["group"] == G1]  # fmt: skip

    ctl(a).join(G1, 12)  # the first client with receivers: every other client is told
    ctl(igmp).wait_for_call("mgm_join_alert", group=G1, member_update=True)
    ctl(b).wait_for_call("mgm_join_alert", group=G1, member_update=True)
    ctl(b).join(G1, 13)  # the second: the first is told
    ctl(a).wait_for_call("mgm_join_alert", group=G1, member_update=True)
    ctl(b).leave(G1, 13)  # back to one client: the one remaining is told
    ctl(a).wait_for_call("mgm_prune_alert", group=G1, member_delete=True)
    ctl(a).leave(G1, 12)  # none left: every other client is told
    ctl(igmp).wait_for_call("mgm_prune_alert", group=G1, member_delete=True)
    ctl(b).wait_for_call("mgm_prune_alert", group=G1, member_delete=True)

    for plugin in (a, b, igmp):
        assert alerts(plugin) == [("mgm_join_alert", True), ("mgm_prune_alert", True)]


# --- MFE creation with questions --------------------------------------------------------------------


def mfe_setup(start_plugin: StartPlugin) -> tuple[PluginProc, PluginProc, PluginProc]:
    """A owns 12 (arrival) and 15; B owns 13 and 14, where IGMP has receivers for SG."""
    igmp = start_plugin("test-igmp", {"interfaces": [13, 14]})
    a = start_plugin("test-routing-a", A | {"interfaces": [12, 15]})
    b = start_plugin("test-routing-b", B | {"interfaces": [13, 14]})
    ctl(igmp).join(SG, 13)
    ctl(igmp).join(SG, 14)
    ctl(b).wait_for_call("mgm_local_join", group=SG, interface=[14, ANY])
    return igmp, a, b


def new_packet(plugin: PluginProc, if_index: int) -> dict[str, Any]:
    args = {"source": S, "group": SG, "if_index": if_index, "next_hop": ANY}
    mfe: dict[str, Any] = ctl(plugin).call("request", op="new_packet", args=args)["result"]["mfe"]
    return mfe


def oil(mfe: dict[str, Any]) -> list[int]:
    return sorted(o["if_index"] for o in mfe["oil"])


def test_mfe_from_new_packet_with_rpf_and_creation_answers(manager: ManagerProc, start_plugin: StartPlugin) -> None:
    _igmp, a, b = mfe_setup(start_plugin)
    ctl(a).call("answers", rpf={"if_index": 15, "next_hop": ANY, "upstream_neighbor": "10.0.0.9"})
    ctl(b).call("answers", creation={"disable": [[14, ANY]]})

    mfe = new_packet(a, 12)  # the reply waits for both answers

    assert (mfe["in_if_index"], mfe["upstream_neighbor"], mfe["in_protocol_id"]) == (15, "10.0.0.9", 100)
    assert oil(mfe) == [13]  # 14 vetoed by its owner
    assert [(c["source"], c["group"], c["interface"]) for c in ctl(a).calls("mgm_rpf")] == [(S, SG, [12, ANY])]
    creation = ctl(b).calls("mgm_creation_alert")
    assert [(c["in_interface"], sorted(i for i, _ in c["oil"])) for c in creation] == [([15, ANY], [13, 14])]
    stored = manager.request("get_mfe", {"source": S, "group": SG})["mfe"]
    assert (stored["in_if_index"], oil(stored)) == (15, [13])
    assert new_packet(a, 12)["in_if_index"] == 15  # known now: answered at once, no new question
    assert len(ctl(a).calls("mgm_rpf")) == 1


def test_mfe_when_plugins_never_answer_takes_the_defaults(start_manager: Any, start_plugin: StartPlugin) -> None:
    manager = start_manager(question_deadline=0.3)
    _igmp, a, b = mfe_setup(start_plugin)
    ctl(a).call("answers", rpf="never")
    ctl(b).call("answers", creation="never")

    mfe = new_packet(a, 12)  # completes at the deadlines, with the defaults

    assert (mfe["in_if_index"], oil(mfe)) == (12, [13, 14])
    assert len(ctl(a).calls("mgm_rpf")) == 1
    (creation,) = ctl(b).calls("mgm_creation_alert")
    # a late answer is applied as an update
    late = {"question": creation["question"], "oil": [{"if_index": 14, "next_hop": ANY, "enabled": False},
                                                      {"if_index": 13, "next_hop": ANY, "enabled": True}]}  # fmt: skip
    ctl(b).call("request", op="answer", args=late)
    wait_for(lambda: oil(manager.request("get_mfe", {"source": S, "group": SG})["mfe"]) == [13], 10, "the late veto")


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_frames_and_arguments_get_error_replies_and_the_manager_keeps_serving(
    manager: ManagerProc, start_plugin: StartPlugin
) -> None:
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    cases = [
        ([b"", b"\xc1"], None, Status.ERROR_INVALID_PARAMETER),  # not msgpack
        ([b"", pack([1, 2, 3])], None, Status.ERROR_INVALID_PARAMETER),  # not a map
        ([b"", pack({"v": 1, "id": 5, "args": {}})], 5, Status.ERROR_INVALID_PARAMETER),  # no op
        ([b"", pack({"v": 9, "id": 6, "op": "ping"})], 6, Status.ERROR_INVALID_PARAMETER),  # wrong version
        ([b"", pack({"v": 1, "id": 7, "op": "fly"})], 7, Status.ERROR_NOT_SUPPORTED),  # unknown op
        ([b"", pack({"v": 1, "id": 8, "op": "ping", "args": [1]})], 8, Status.ERROR_INVALID_PARAMETER),
        (request(9, "register_protocol", {"protocol_id": True, "component_id": 1}), 9, INVALID),
        (request(10, "take_interface_ownership", {"handle": 12345, "if_index": 1, "next_hop": ANY}), 10, INVALID),
    ]
    for frames, echoed, status in cases:
        reply = manager.raw(frames)
        assert (reply["id"], reply["status"]) == (echoed, int(status)), (frames, reply)
        assert reply["message"], (frames, reply)
    with pytest.raises(TimeoutError):  # more than 64 KiB: refused without a reply, and nothing else happens
        manager.raw([b"", b"\x00" * (65 * 1024)], timeout=0.5)

    bad_args = [
        ("add_group_membership", {"source": ANY, "source_mask": ANY, "group": "10.0.0.1",
                                  "group_mask": "255.255.255.255", "if_index": 12, "next_hop": ANY, "flags": 1}),
        ("add_group_membership", {"source": ANY, "source_mask": "255.255.0.0", "group": G1,
                                  "group_mask": "255.255.255.255", "if_index": 12, "next_hop": ANY, "flags": 1}),
        ("add_group_membership", {"source": ANY, "source_mask": ANY, "group": G1,
                                  "group_mask": "255.255.255.255", "if_index": 12, "next_hop": ANY, "flags": 4}),
        ("take_interface_ownership", {"if_index": -1, "next_hop": ANY}),
        ("take_interface_ownership", {"if_index": 16, "next_hop": "not an address"}),
    ]  # fmt: skip
    for op, args in bad_args:
        with pytest.raises(ControlError) as info:
            ctl(a).call("request", op=op, args=args)
        assert info.value.status == Status.ERROR_INVALID_PARAMETER, (op, args)

    assert manager.alive() and manager.ping()
    ctl(a).call("take", if_index=16)  # the plugin's registration survived all of it
    ctl(a).join(G1, 16)
    assert enumerate_groups(a) == [(ANY, G1)]


# --- a plugin killed ------------------------------------------------------------------------------------------


def test_a_killed_plugin_is_cleaned_up_with_its_alerts(manager: ManagerProc, start_plugin: StartPlugin) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [13]})
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    b = start_plugin("test-routing-b", B | {"interfaces": [13, 14]})
    ctl(b).join(G1, 14)
    ctl(a).wait_for_call("mgm_join_alert", group=G1, member_update=True)
    assert owner(manager, 13) == (101, 1)
    enables_before = len(hooks(igmp, "mgm_enable_igmp"))

    os.kill(b.pid, signal.SIGKILL)
    b.wait(5)

    # its membership goes (the last client for G1: everyone else is told), then its interfaces
    ctl(a).wait_for_call("mgm_prune_alert", group=G1, member_delete=True, timeout=15)
    ctl(igmp).wait_for_call("mgm_prune_alert", group=G1, member_delete=True, timeout=15)
    wait_for(lambda: len(hooks(igmp, "mgm_enable_igmp")) > enables_before, 15, "IGMP enabled again on 13")
    assert hooks(igmp, "mgm_disable_igmp")[-1]["interface"] == [13, ANY]
    assert owner(manager, 13) == (10, 1)  # IGMP alone again
    assert owner(manager, 14) is None
    assert enumerate_groups(a) == []
    assert "handle" in manager.request("register_protocol", {"protocol_id": 101, "component_id": 1})  # free again


# --- the manager restarted ---------------------------------------------------------------------------------------


def test_after_a_manager_restart_plugins_register_and_replay(start_manager: Any, start_plugin: StartPlugin) -> None:
    first = start_manager()
    igmp = start_plugin("test-igmp", {"interfaces": [11, 12]})
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    b = start_plugin("test-routing-b", B | {"interfaces": [13]})
    ctl(igmp).join(G1, 12)
    ctl(b).join(G2, 13)
    ctl(a).wait_for_call("mgm_local_join", group=G1)

    assert first.stop() == 0, first.log()
    second = start_manager()
    for plugin in (igmp, a, b):
        ctl(plugin).wait_for_call("mgm_replay", timeout=15)

    wait_for(lambda: sorted(enumerate_groups(a)) == [(ANY, G1), (ANY, G2)], 10, "the memberships replayed")
    assert [owner(second, i) for i in (11, 12, 13)] == [(10, 1), (100, 1), (101, 1)]
    assert len({ctl(p).call("ping")["handle"] for p in (igmp, a, b)}) == 3


def test_mfe_alerts_when_its_oil_empties_and_fills_and_the_prune_answer_sets_the_timeout(
    manager: ManagerProc, start_plugin: StartPlugin
) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [13]})
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    start_plugin("test-routing-b", B | {"interfaces": [13]})
    ctl(igmp).join(SG, 13)
    assert oil(new_packet(a, 12)) == [13]
    ctl(a).call("answers", prune=42.0)

    ctl(igmp).leave(SG, 13)  # the OIL empties: the incoming interface's owner is asked how long to keep it
    prune = ctl(a).wait_for_call("mgm_prune_alert", group=SG, member_delete=False)
    assert (prune["source"], prune["interface"]) == (S, [12, ANY]) and isinstance(prune["question"], int)
    wait_for(lambda: manager.request("get_mfe", {"source": S, "group": SG})["mfe"]["timeout"] == 42.0, 10,
             "the answered timeout")  # fmt: skip

    ctl(igmp).join(SG, 13)  # and fills again
    ctl(a).wait_for_call("mgm_join_alert", group=SG, source=S, member_update=False)
    assert oil(manager.request("get_mfe", {"source": S, "group": SG})["mfe"]) == [13]


def test_a_negative_mfe_asks_the_incoming_owner(manager: ManagerProc, start_plugin: StartPlugin) -> None:
    a = start_plugin("test-routing-a", A | {"interfaces": [12]})
    start_plugin("test-igmp", {"interfaces": [13]})
    start_plugin("test-routing-b", B | {"interfaces": [14]})
    mfe = new_packet(a, 12)  # nobody wants the flow: an MFE with an empty OIL drops it
    assert (mfe["in_if_index"], mfe["oil"]) == (12, [])
    assert ctl(a).wait_for_call("mgm_prune_alert", group=SG, member_delete=False)["question"] is not None

"""`mgm show` as a subprocess against a live `mgm manager`, with state made by the recorder test plugins.

The tables are checked on content (rows parsed back from the text, and the
--json document), paging with more entries than one page (the state snapshot
pages at 2000 list entries; MFEs are listed with a small --page-size), and
the one-line answer when no manager is there.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import socket
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from mgm_testplugins.control import ctl
from mgm_testplugins.processes import MGM, ManagerProc, PluginProc, toml_config
from tool_procs import ANY, FAR, LO, A, RawClient

Show = Callable[..., subprocess.CompletedProcess[str]]
StartPlugin = Callable[..., PluginProc]


def rows(text: str) -> list[list[str]]:
    """The table's data rows (between the header rule and the footer), split on runs of 2+ spaces."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return [re.split(r"\s{2,}", line.strip()) for line in lines[rule + 1 : -1]]


def header(text: str) -> list[str]:
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return re.split(r"\s{2,}", lines[rule - 1].strip())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(result))
    return doc


def setup_state(start_plugin: StartPlugin) -> tuple[PluginProc, PluginProc]:
    """IGMP on lo and FAR+1 with receivers; routing A owns lo and FAR; two MFEs coming in on FAR."""
    igmp = start_plugin("test-igmp", {"interfaces": [LO, FAR + 1]})
    a = start_plugin("test-routing-a", A | {"interfaces": [LO, FAR]})
    for group, if_index in (("239.1.1.1", LO), ("239.1.1.1", FAR + 1), ("239.2.2.2", LO)):
        ctl(igmp).call("add_membership", source=ANY, group=group, if_index=if_index)
    ctl(igmp).call("add_membership", source="10.1.1.1", group="232.1.1.1", if_index=LO)
    for source in ("10.9.9.9", "10.9.9.8"):
        args = {"source": source, "group": "239.1.1.1", "if_index": FAR, "next_hop": ANY}
        ctl(a).call("request", op="new_packet", args=args)
    counters = {"source": "10.9.9.9", "group": "239.1.1.1", "in_packets": 1234, "in_bytes": 567890,
                "wrong_if_packets": 7, "oil": [{"if_index": LO, "next_hop": ANY, "out_packets": 1200}]}  # fmt: skip
    ctl(a).call("request", op="mfe_counters", args={"entries": [counters]})
    return igmp, a


def test_show_tables_and_json(manager: ManagerProc, start_plugin: StartPlugin, show: Show) -> None:
    setup_state(start_plugin)

    out = ok(show("protocols"))
    assert header(out) == ["PROTOCOL", "COMPONENT", "NAME", "OWNS", "MEMBERSHIPS", "ANSWERS"]
    # IGMP alone on FAR+1 is its owner; on lo the routing protocol is (IGMP shows in the interfaces table);
    # both test plugins implement mgm_rpf and mgm_creation_alert, so the manager asks them both questions
    both = "creation_alert,rpf"
    assert rows(out) == [["10 (igmp)", "1", "test-igmp", "1", "4", both],
                         ["100", "1", "test-routing-a", "2", "0", both]]  # fmt: skip
    assert out.splitlines()[-1] == "2 protocol(s)"
    doc = as_json(show("protocols", "--json"))
    assert doc["table"] == "protocols" and type(doc["epoch"]) is int and type(doc["seq"]) is int
    assert doc["entries"] == [
        {"protocol_id": 10, "component_id": 1, "name": "test-igmp", "questions": ["creation_alert", "rpf"]},
        {"protocol_id": 100, "component_id": 1, "name": "test-routing-a", "questions": ["creation_alert", "rpf"]},
    ]

    out = ok(show("interfaces"))
    assert header(out) == ["INTERFACE", "OWNER", "IGMP", "MEMBERSHIPS", "MFES IN", "MFES OUT", "BOUNDARIES"]
    assert rows(out) == [
        [f"{LO}(lo)", "100/1 test-routing-a", "yes", "3", "0", "2", "-"],
        [str(FAR), "100/1 test-routing-a", "no", "0", "2", "0", "-"],
        [str(FAR + 1), "10/1 test-igmp", "yes", "1", "0", "2", "-"],
    ]
    doc = as_json(show("interfaces", "--json"))
    assert [(i["if_index"], i["owner"], i["igmp"]) for i in doc["entries"]] == [
        (LO, A, True), (FAR, A, False), (FAR + 1, {"protocol_id": 10, "component_id": 1}, True)]  # fmt: skip

    out = ok(show("groups"))
    assert header(out) == ["GROUP", "SOURCE", "INTERFACE", "PROTOCOL"]
    assert rows(out) == [
        ["232.1.1.1", "10.1.1.1", f"{LO}(lo)", "10/1 test-igmp"],
        ["239.1.1.1", "*", f"{LO}(lo)", "10/1 test-igmp"],
        ["239.1.1.1", "*", str(FAR + 1), "10/1 test-igmp"],
        ["239.2.2.2", "*", f"{LO}(lo)", "10/1 test-igmp"],
    ]
    doc = as_json(show("groups", "--json"))
    assert [(m["group"], m["source"], m["source_mask"], m["if_index"]) for m in doc["entries"]] == [
        ("232.1.1.1", "10.1.1.1", "255.255.255.255", LO), ("239.1.1.1", ANY, ANY, LO),
        ("239.1.1.1", ANY, ANY, FAR + 1), ("239.2.2.2", ANY, ANY, LO)]  # fmt: skip

    out = ok(show("mfes"))
    assert header(out) == ["SOURCE", "GROUP", "IIF", "UPSTREAM", "PROTO", "OIL", "AGE", "EXPIRES"]
    table = rows(out)
    assert [r[:6] for r in table] == [
        ["10.9.9.8", "239.1.1.1", str(FAR), ANY, "100", f"{LO}(lo) {FAR + 1}"],
        ["10.9.9.9", "239.1.1.1", str(FAR), ANY, "100", f"{LO}(lo) {FAR + 1}"],
    ]
    assert all(re.fullmatch(r"\d+(s|m\d\ds)", cell) for r in table for cell in r[6:8])
    out = ok(show("mfes", "--stats"))
    assert header(out)[-3:] == ["PACKETS", "BYTES", "WRONG-IF"]
    by_source = {r[0]: r for r in rows(out)}
    assert by_source["10.9.9.9"][5] == f"{LO}(lo):1200 {FAR + 1}:0"
    assert by_source["10.9.9.9"][-3:] == ["1234", "567890", "7"]
    assert by_source["10.9.9.8"][-3:] == ["0", "0", "0"]

    doc = as_json(show("mfes", "--stats", "--json"))
    assert doc["table"] == "mfes" and "seq" not in doc
    first, second = doc["entries"]
    assert (first["source"], second["source"]) == ("10.9.9.8", "10.9.9.9")
    assert second["in_packets"] == 1234 and second["in_bytes"] == 567890 and second["wrong_if_packets"] == 7
    assert [(o["if_index"], o["out_packets"]) for o in second["oil"]] == [(LO, 1200), (FAR + 1, 0)]
    assert second["in_if_index"] == FAR and second["in_protocol_id"] == 100 and second["expires"] > second["created"]
    assert "in_packets" not in as_json(show("mfes", "--json"))["entries"][0]


def test_show_pages_through_large_tables(start_manager: Callable[..., ManagerProc], show: Show) -> None:
    """2500 memberships (two snapshot pages) on two interfaces, added in random order; 25 MFEs, 4 per page.

    The state is made by one pipelined client (thousands of control round trips would take the test's
    time); the manager's long liveness keeps what that client registered.
    """
    with closing(RawClient(start_manager(liveness=600).api)) as client:
        handle = client.requests([("register_protocol", {"protocol_id": 10, "component_id": 1, "name": "bulk"})])[0]
        h = handle["handle"]
        client.requests([("take_interface_ownership", {"handle": h, "if_index": i, "next_hop": ANY})
                         for i in (FAR, FAR + 1, FAR + 2)])  # fmt: skip
        wanted = [(f"239.{1 + i // 250}.{(i % 250) // 10}.{i % 10 + 1}", FAR + i % 2) for i in range(2500)]
        order = list(wanted)
        random.Random(4).shuffle(order)
        client.requests([("add_group_membership", {"handle": h, "source": ANY, "source_mask": ANY, "group": g,
                                                   "group_mask": "255.255.255.255", "if_index": i, "next_hop": ANY,
                                                   "flags": 1}) for g, i in order])  # fmt: skip

        def group_key(group: str) -> tuple[int, ...]:
            return tuple(int(x) for x in group.split("."))

        expected = sorted(wanted, key=lambda m: (group_key(m[0]), m[1]))
        doc = as_json(show("groups", "--json"))
        assert [(m["group"], m["if_index"]) for m in doc["entries"]] == expected
        out = ok(show("groups"))
        assert [(r[0], int(r[2])) for r in rows(out)] == expected
        assert out.splitlines()[-1] == "2500 membership(s)"

        sources = [f"10.7.{i // 10}.{i % 10 + 1}" for i in range(25)]
        client.requests([("new_packet", {"handle": h, "source": s, "group": "239.1.0.1", "if_index": FAR + 2,
                                         "next_hop": ANY}) for s in reversed(sources)])  # fmt: skip
        doc = as_json(show("mfes", "--json", "--page-size", "4"))
        assert [m["source"] for m in doc["entries"]] == sources
        assert all([o["if_index"] for o in m["oil"]] == [FAR] for m in doc["entries"])
        assert [r[0] for r in rows(ok(show("mfes", "--page-size", "4")))] == sources
        assert as_json(show("mfes", "--json", "--page-size", "25"))["entries"] == doc["entries"]


def test_show_without_a_manager(ipc_dir: Path) -> None:
    """No socket at all, and a socket file nobody listens on: one line on stderr, status 1, no traceback."""
    stale = ipc_dir / "stale"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # the file stays after close: what a killed manager leaves behind
    for api in (f"ipc://{ipc_dir}/nothing", f"ipc://{stale}"):
        argv = [*MGM, "show", "groups", "--api", api, "--events", f"ipc://{ipc_dir}/events", "--timeout", "0.5"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"mgm show: no manager answers on {api}: is `mgm up` (or `mgm manager`) running?")


def test_show_and_monitor_take_the_manager_from_config(manager: ManagerProc, ipc_dir: Path) -> None:
    """--config gives the [manager] endpoints (and, over tcp, the keys) as for `mgm up`; --api wins over it."""
    config = ipc_dir / "router.toml"
    config.write_text(toml_config({}, {"api": manager.api, "events": manager.events}))
    shown = subprocess.run([*MGM, "show", "protocols", "--json", "--config", str(config)], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert as_json(shown)["entries"] == []
    nothing = f"ipc://{ipc_dir}/nothing"
    for tool in ("show", "monitor"):
        argv = [*MGM, tool, *(["protocols"] if tool == "show" else []), "--config", str(config), "--api", nothing,
                "--timeout", "0.5"]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1 and f"no manager answers on {nothing}" in result.stderr, result.stderr


def test_show_refuses_bad_options(manager: ManagerProc, show: Show) -> None:
    for args, message in ((["groups", "--stats"], "--stats applies to `mgm show mfes` only"),
                          (["mfes", "--page-size", "0"], "--page-size must be at least 1"),
                          (["routes"], "invalid choice: 'routes'")):  # fmt: skip
        result = show(*args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_show_sees_changes(manager: ManagerProc, start_plugin: StartPlugin, show: Show) -> None:
    """Each run is a fresh look: a deleted membership and a released interface are gone from the next table."""
    igmp = start_plugin("test-igmp", {"interfaces": [FAR]})
    ctl(igmp).call("add_membership", source=ANY, group="239.5.5.5", if_index=FAR)
    assert [r[0] for r in rows(ok(show("groups")))] == ["239.5.5.5"]
    ctl(igmp).call("delete_membership", source=ANY, group="239.5.5.5", if_index=FAR)
    ctl(igmp).call("release", if_index=FAR)
    assert as_json(show("groups", "--json"))["entries"] == []
    assert as_json(show("interfaces", "--json"))["entries"] == []


def test_the_interfaces_table_shows_boundaries_as_prefixes() -> None:
    """Each interface's boundaries (from any owner) as prefixes, the first two and a count past that."""
    from mgm.core.cli.show import interfaces_table

    def ranges(*prefixes: str) -> list[dict[str, Any]]:
        return [{"protocol_id": 65002, "component_id": 1, "group": str(n.network_address), "group_mask": str(n.netmask)}
                for n in map(ipaddress.IPv4Network, prefixes)]  # fmt: skip

    state = {"interfaces": [
        {"if_index": 7001, "next_hop": "0.0.0.0", "owner": None, "igmp": True, "boundaries": ranges("239.5.0.0/16")},
        {"if_index": 7002, "next_hop": "0.0.0.0", "owner": None, "igmp": True,
         "boundaries": ranges("224.0.0.0/5", "232.0.0.0/6", "236.0.0.0/7")},
        {"if_index": 7003, "next_hop": "0.0.0.0", "owner": None, "igmp": False},  # an older manager: no key
    ]}  # fmt: skip
    table, _, _ = interfaces_table(state)
    assert list(table.columns[-1].cells) == ["239.5.0.0/16", "224.0.0.0/5,232.0.0.0/6,+1", "-"]


def test_the_interfaces_table_says_who_forwards_and_whether_anything_is() -> None:
    from mgm.core.cli.show import interfaces_table

    def footer(*names: str) -> str:
        protocols = [{"protocol_id": 65001, "component_id": 1, "name": name} for name in names]
        return interfaces_table({"protocols": protocols, "interfaces": []})[2]

    assert footer("forwarder (nft)") == "0 interface(s); forwarded by forwarder (nft)"
    assert footer("forwarder (mrt)").endswith("forwarded by forwarder (mrt)")
    assert "SIMULATED, nothing is really forwarded" in footer("forwarder (simulated)")
    assert footer().endswith("no forwarder is registered: nothing is forwarded")

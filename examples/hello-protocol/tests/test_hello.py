"""hello against a live manager, with the mgm_bus fixture that mgmbus's pytest plugin provides.

The test plays IGMP (receivers on interface 13) and the forwarder (a new flow
arriving on interface 12) with the fixture's client; hello owns 11, 12, 13.
"""

from __future__ import annotations

from typing import Any

import pytest

HELLO = (65100, 1)
IGMP = (10, 1)
TABLE = {"interfaces": [11, 12, 13], "upstream": 11, "blocked": ["239.9.9.9"]}


@pytest.fixture
def hello(mgm_bus: Any) -> Any:
    # answers come back within milliseconds; a generous deadline keeps a loaded CI machine from taking the default
    mgm_bus.start_manager(question_deadline=2.0)
    return mgm_bus.start_plugin("hello", TABLE)


def igmp_receiver(mgm_bus: Any, group: str, if_index: int = 13) -> int:
    """Register as IGMP beside hello on `if_index` and report a (*,G) receiver there; the handle."""
    client = mgm_bus.client
    handle = client.handle or client.register(*IGMP, "igmp (test)")
    if not any(e["type"] == "interface_owned" and e["protocol_id"] == IGMP[0] for e in client.events()):
        client.request("take_interface_ownership", {"handle": handle, "if_index": if_index, "next_hop": "0.0.0.0"})
    client.request("add_group_membership", {
        "handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": group,
        "group_mask": "255.255.255.255", "if_index": if_index, "next_hop": "0.0.0.0", "flags": 1})
    return handle


def new_flow(mgm_bus: Any, handle: int, source: str, group: str, arrived_on: int) -> dict[str, Any]:
    result = mgm_bus.request("new_packet", {"handle": handle, "source": source, "group": group,
                                            "if_index": arrived_on, "next_hop": "0.0.0.0"})
    mfe: dict[str, Any] = result["mfe"]
    return mfe


def test_hello_owns_its_interfaces(hello: Any, mgm_bus: Any) -> None:
    assert hello.protocol == HELLO
    owners = {i["if_index"]: i["owner"] for i in mgm_bus.state()["interfaces"]}
    assert owners == {n: {"protocol_id": HELLO[0], "component_id": HELLO[1]} for n in (11, 12, 13)}
    protocols = {p["name"]: (p["protocol_id"], p["component_id"]) for p in mgm_bus.state()["protocols"]}
    assert protocols == {"hello": HELLO}


def test_hello_hears_local_joins(hello: Any, mgm_bus: Any) -> None:
    igmp_receiver(mgm_bus, "239.1.1.1")
    join = mgm_bus.wait_for_event(lambda e: e["type"] == "local_join" and e["topic"] == "proto/65100/1")
    assert (join["group"], join["if_index"]) == ("239.1.1.1", 13)


def test_hello_moves_a_flow_to_its_upstream_interface(hello: Any, mgm_bus: Any) -> None:
    handle = igmp_receiver(mgm_bus, "239.1.1.1")
    mfe = new_flow(mgm_bus, handle, "10.1.1.1", "239.1.1.1", arrived_on=12)
    assert mfe["in_if_index"] == 11  # hello's rpf answer, not the arrival interface
    assert [o["if_index"] for o in mfe["oil"]] == [13]
    assert mfe["in_protocol_id"] == HELLO[0]


def test_hello_never_forwards_a_blocked_group(hello: Any, mgm_bus: Any) -> None:
    handle = igmp_receiver(mgm_bus, "239.9.9.9")
    mfe = new_flow(mgm_bus, handle, "10.1.1.1", "239.9.9.9", arrived_on=11)
    assert mfe["oil"] == []  # hello vetoed interface 13 in its creation alert
    created = mgm_bus.wait_for_event(lambda e: e["type"] == "mfe_created" and e["mfe"]["group"] == "239.9.9.9")
    assert created["mfe"]["oil"] == []


def test_hello_without_upstream_stops_with_a_config_error(mgm_bus: Any) -> None:
    plugin = mgm_bus.start_plugin("hello", {"interfaces": [11]}, wait=False)
    assert plugin.wait(15) == 2  # a mistake a restart cannot fix
    assert "plugins.hello.upstream" in plugin.log() and "hello needs upstream" in plugin.log()
    assert mgm_bus.state()["protocols"] == []  # it never registered

"""Protocol status (an extension): what a protocol says of its own state, kept for `mgm show` and metrics."""

from __future__ import annotations

from typing import Any

import pytest
from rules_harness import IGMP, PIM, Core

from mgm.bus.status import Status
from mgm.core.state import STATUS_MAX_DEPTH, STATUS_MAX_ITEMS
from mgm.core.types import ClientId

STATUS = {"neighbors": [{"interface": "eth0", "address": "10.0.0.2"}], "metrics": {"neighbors": 1}}


def get(core: Core, pid: int = PIM, cid: int = 1) -> Any:
    return core.req(b"show", "get_protocol_status", protocol_id=pid, component_id=cid)


def test_a_status_is_served_whole_with_its_age_and_publishes_nothing(core: Core) -> None:
    pim = core.register(PIM, name="pim")
    core.drop()
    assert pim("set_protocol_status", status=STATUS) == {}
    assert core.events() == []  # polled by whoever wants it: a chatty protocol floods no monitor
    core.now += 2.5
    assert get(core) == {"name": "pim", "status": STATUS, "age": 2.5}
    pim("set_protocol_status", status={"metrics": {}})  # each replaces the last
    assert get(core)["status"] == {"metrics": {}}
    assert list(core.mgm.protocol_statuses()) == [(ClientId(PIM, 1), "pim", {"metrics": {}})]


def test_no_status_to_get_is_not_found(core: Core) -> None:
    core.refused(Status.ERROR_NOT_FOUND, get, core)  # not registered
    core.register(PIM)
    core.register(IGMP)
    error = core.refused(Status.ERROR_NOT_FOUND, get, core)
    assert "has set no status" in error.message


def test_the_status_goes_with_its_client(core: Core) -> None:
    pim = core.register(PIM)
    pim("set_protocol_status", status=STATUS)
    core.mgm.connection_lost(pim.conn, core.now)
    core.refused(Status.ERROR_NOT_FOUND, get, core)
    assert list(core.mgm.protocol_statuses()) == []


def nested(depth: int) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for _ in range(depth - 1):
        status = {"x": status}
    return status


@pytest.mark.parametrize(("status", "words"), [
    ([1, 2], "status must be a map"),
    ({1: "a"}, "map keys must be strings"),
    ({"a": {"b": {2: 1}}}, "map keys must be strings"),
    ({"a": {1, 2}}, "a set is not a status value"),
    (nested(STATUS_MAX_DEPTH + 1), f"nested deeper than {STATUS_MAX_DEPTH}"),
    ({"a": list(range(STATUS_MAX_ITEMS))}, f"more than {STATUS_MAX_ITEMS} values"),
])  # fmt: skip
def test_a_status_that_is_not_plain_data_or_too_big_is_refused(core: Core, status: Any, words: str) -> None:
    pim = core.register(PIM)
    error = core.refused(Status.ERROR_INVALID_PARAMETER, lambda: pim("set_protocol_status", status=status))
    assert words in error.message


def test_a_status_at_the_limits_is_taken(core: Core) -> None:
    pim = core.register(PIM)
    for status in (nested(STATUS_MAX_DEPTH), {"a": list(range(STATUS_MAX_ITEMS - 1))}):
        assert pim("set_protocol_status", status=status) == {}

"""core/runtime/logs.py: one line per record, JSON with ts/level/logger/msg and the extra fields, text as key=value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from mgm.core.runtime.logs import fields, setup
from mgm.plugins.testing import MgmBus, wait_for

REQUIRED = {"ts", "level", "logger", "msg"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_line_has_the_keys_and_the_extra_fields(restore_logging: None) -> None:
    out = io.StringIO()
    setup("info", "json", tag="hello", stream=out)
    log = logging.getLogger("mgm.test")
    log.info("joined %s", "239.1.1.1", extra=fields(protocol=(65100, 1), interface=(3, "0.0.0.0"), group="239.1.1.1"))
    log.debug("not shown at info")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "joined 239.1.1.1"
    assert first["level"] == "info" and first["logger"] == "mgm.test" and first["process"] == "hello"
    assert (first["protocol"], first["interface"], first["group"]) == ("65100/1", "3/0.0.0.0", "239.1.1.1")
    assert isinstance(first["ts"], float)
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_text_line_puts_the_fields_after_the_message(restore_logging: None) -> None:
    out = io.StringIO()
    setup("debug", "text", stream=out)
    logging.getLogger("mgm.test").warning("owner changed", extra=fields(protocol=(10, 1), group="239.1.1.1",
                                                                        reason="connection lost"))
    (line,) = out.getvalue().splitlines()
    assert line.endswith('mgm.test: owner changed protocol=10/1 group=239.1.1.1 reason="connection lost"')
    assert " WARNING " in line


def test_bad_format_or_level_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="log format"):
        setup("info", "xml")
    with pytest.raises(ValueError, match="log level"):
        setup("loud", "text")


def test_manager_json_log_is_one_object_per_line(mgm_bus: MgmBus) -> None:
    manager = mgm_bus.start_manager(log_format="json")
    client = mgm_bus.client
    handle = client.register(65100, 7, "logtest")
    client.request("take_interface_ownership", {"handle": handle, "if_index": 4, "next_hop": "0.0.0.0"})
    client.request("release_interface_ownership", {"handle": handle, "if_index": 4, "next_hop": "0.0.0.0"})
    client.request("deregister_protocol", {"handle": handle})
    assert manager.stop() == 0
    records = [json.loads(line) for line in manager.log().splitlines()]  # every line: a whole JSON object
    for record in records:
        assert isinstance(record, dict) and record.keys() >= REQUIRED, record
    mine = [r for r in records if r.get("protocol") == "65100/7"]
    assert [r["event"] for r in mine] == ["protocol_registered", "interface_owned", "interface_released",
                                          "protocol_deregistered"]
    assert mine[1]["interface"] == "4/0.0.0.0"
    assert any(r["msg"].startswith("manager started") for r in records)


def test_plugin_hook_calls_are_json_lines_with_protocol_interface_and_group(mgm_bus: MgmBus) -> None:
    mgm_bus.log_format = "json"
    table = {"protocol_id": 65200, "component_id": 1, "interfaces": [5], "control": f"ipc://{mgm_bus.dir}/ctl"}
    plugin = mgm_bus.start_plugin("test-routing-a", table)
    client = mgm_bus.client
    handle = client.register(10, 1, "igmp (test)")
    client.request("take_interface_ownership", {"handle": handle, "if_index": 5, "next_hop": "0.0.0.0"})
    client.request("add_group_membership", {
        "handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
        "group_mask": "255.255.255.255", "if_index": 5, "next_hop": "0.0.0.0", "flags": 1})  # fmt: skip

    def hook_line() -> dict[str, object] | None:
        records = [json.loads(line) for line in plugin.log().splitlines()]
        return next((r for r in records if r.get("hook") == "mgm_local_join"), None)

    record = wait_for(hook_line, 10, "the host's log line of the mgm_local_join call")
    assert record.keys() >= REQUIRED
    assert (record["protocol"], record["interface"], record["group"], record["source"]) == (
        "65200/1", "5/0.0.0.0", "239.1.1.1", "0.0.0.0")
    assert record["process"] == "test-routing-a" and record["logger"] == "mgm.plugins.host"
    for line in plugin.log().splitlines():
        assert json.loads(line).keys() >= REQUIRED, line

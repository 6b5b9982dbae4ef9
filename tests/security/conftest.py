"""Fixtures of the security tests: keys, and a manager on loopback tcp with CURVE and an allow-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sec_support import ALLOWED_INDEX, ROUTING_PROTOCOL, STATIC_PROTOCOL_ID, Keys, TcpManager, start_tcp_manager


@pytest.fixture
def keys(ipc_dir: Path) -> Keys:
    k = Keys(ipc_dir / "keys")
    k.make("manager", "east", "west", "observer", "static", "stranger")
    return k


def allow_list(keys: Keys) -> str:
    """east: protocol 21 on lo and index 7; west: protocol 22 on index 8; observer: nothing to claim;
    static: the static plugin on 7 and 8; stranger is not listed."""
    return f"""
[[manager.clients]]
name = "east"
public_key = "{keys.public['east']}"
protocol_ids = [{ROUTING_PROTOCOL}]
interfaces = ["lo", {ALLOWED_INDEX}]

[[manager.clients]]
name = "west"
public_key = "{keys.public['west']}"
protocol_ids = [22]
interfaces = [8]

[[manager.clients]]
name = "observer"
public_key = "{keys.public['observer']}"

[[manager.clients]]
name = "static"
public_key = "{keys.public['static']}"
protocol_ids = [{STATIC_PROTOCOL_ID}]
interfaces = [{ALLOWED_INDEX}, 8]
"""


@pytest.fixture
def tcp_manager(ipc_dir: Path, keys: Keys, procs: list[Any]) -> TcpManager:
    return start_tcp_manager(ipc_dir, keys, allow_list(keys), procs)

"""Fixtures of the security tests: keys, and a manager on loopback tcp with CURVE and an allow-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sec_support import Keys, TcpManager, start_tcp_manager


@pytest.fixture
def keys(ipc_dir: Path) -> Keys:
    k = Keys(ipc_dir / "keys")
    k.make("manager", "east", "west", "observer", "static", "stranger")
    return k


@pytest.fixture
def tcp_manager(ipc_dir: Path, keys: Keys, procs: list[Any]) -> TcpManager:
    return start_tcp_manager(ipc_dir, keys, procs)

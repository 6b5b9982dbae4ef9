"""`mgm up` with its manager on tcp: one file gives the manager its key and allow-list, the plugins theirs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mgm_testplugins.processes import StartUp
from sec_support import ALLOWED_INDEX, STATIC_PROTOCOL_ID, Keys, free_port, reply_to

from mgm.plugins.testing import MGM, wait_for

GROUP = "239.4.5.6"


def router_config(keys: Keys, api: str, events: str) -> str:
    return f"""
[manager]
api = "{api}"
events = "{events}"
curve_secret_key = "keys/manager.key_secret"
curve_server_public_key = "{keys.public['manager']}"
curve_client_key = "keys/static.key_secret"

[[manager.clients]]
name = "local-plugins"
public_key = "{keys.public['static']}"
protocol_ids = [{STATIC_PROTOCOL_ID}]
interfaces = [{ALLOWED_INDEX}, 8]

[[manager.clients]]
name = "ops"
public_key = "{keys.public['observer']}"

[plugins.static]
interfaces = [{ALLOWED_INDEX}, 8]
routes = [{{ group = "{GROUP}", from = {ALLOWED_INDEX}, to = [8] }}]
"""


def test_mgm_up_runs_manager_and_plugins_over_tcp_and_curve(ipc_dir: Path, keys: Keys, start_up: StartUp) -> None:
    api, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = ipc_dir / "router.toml"
    config.write_text(router_config(keys, api, events))
    up = start_up(config)

    def members() -> list[Any]:
        reply = reply_to(api, keys.curve("observer"), "sync", {"stream": "state"}, timeout=1.0)
        if reply is None or reply["status"] != 0:
            return []
        return [m for m in reply["result"]["state"]["memberships"] if m["group"] == GROUP]

    found = wait_for(lambda: members() or not up.alive(), 30, "the static plugin's membership under mgm up")
    assert up.alive(), up.log()
    assert [m["if_index"] for m in found] == [8]
    assert up.stop() == 0, up.log()


def test_mgm_up_refuses_a_tcp_manager_without_client_keys(ipc_dir: Path, keys: Keys) -> None:
    config = ipc_dir / "router.toml"
    text = router_config(keys, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    config.write_text(text.replace('curve_client_key = "keys/static.key_secret"\n', "").replace(
        f'curve_server_public_key = "{keys.public["manager"]}"\n', ""))
    done = subprocess.run([*MGM, "up", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "needs CURVE" in done.stderr

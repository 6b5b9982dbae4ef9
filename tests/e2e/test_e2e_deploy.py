"""The examples in deploy/: each loads, the built-in plugins' tables pass their checks, router.toml forwards.

The structure check runs everywhere (interface names are not resolved: the
example's names are not this machine's).  The namespace test builds a
router whose interfaces carry the example's names and runs `mgm up` on the
file as shipped, but for the forwarder's backend: pinned to each the kernel
offers (`forwarder_backend`) instead of "auto".  IGMP-driven and static
forwarding at once; what the kernel sent out of each interface is read
through `KernelView`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_stack import MGM, START_WAIT, WAIT
from kernel_view import KernelView
from netns import Topology, send_udp, wait_until

from mgm.core.runtime.config import Config, load
from mgm.plugins.forwarder.plugin import read_settings
from mgm.plugins.forwarder.sim import SimForwarder
from mgm.plugins.igmp.plugin import read_parameters
from mgm.plugins.proxy import settings as proxy_settings
from mgm.plugins.static.routes import parse as static_routes
from mgm.plugins.supervisor import missing_plugins

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHECKS: dict[str, Callable[[Config, str], Any]] = {
    "igmp": lambda config, name: read_parameters(config.plugins[name].table),
    "forwarder": lambda config, name: read_settings(config.plugins[name].table),
    "forwarder-sim": lambda config, name: read_settings(config.plugins[name].table, SimForwarder.extra_keys),
    "static": static_routes,
    "proxy": proxy_settings.parse,
}


def test_there_is_an_example() -> None:
    assert (DEPLOY / "router.toml").is_file()


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_loads_and_passes_its_plugins_checks(path: Path) -> None:
    config = load(path)
    assert config.plugins, f"{path.name} configures no plugin"
    built_in = [name for name in config.plugins if name in CHECKS]
    assert missing_plugins(built_in) == []
    for name in built_in:
        CHECKS[name](config, name)
    # Other plugins (third parties', e.g. examples/) check their own keys when they load; the loader
    # has checked what the host reads of their tables (interfaces, ids).


@pytest.mark.netns
def test_the_router_example_forwards_igmp_joins_and_static_routes_at_once(
    topology: Topology, forwarder_backend: str
) -> None:
    """eth0 (senders) -> eth1 by IGMP join; eth3 (192.0.2.10, the feed) -> eth4 by the static routes."""
    rtr, lan_snd, lan_rx, other, feed, far = topology.namespaces("rtr", "snd", "hrx", "hoth", "feed", "far")
    snd_link = topology.link(rtr, lan_snd, "10.93.0.1/24", "10.93.0.2/24", a_if="eth0")
    topology.link(rtr, lan_rx, "10.93.1.1/24", "10.93.1.2/24", a_if="eth1")
    topology.link(rtr, other, "10.93.2.1/24", "10.93.2.2/24", a_if="eth2")
    feed_link = topology.link(rtr, feed, "192.0.2.1/24", "192.0.2.10/24", a_if="eth3")
    topology.link(rtr, far, "10.93.4.1/24", "10.93.4.2/24", a_if="eth4")
    lan_snd.multicast_route(snd_link.b_if)
    feed.multicast_route(feed_link.b_if)
    shipped = (DEPLOY / "router.toml").read_text()
    assert shipped.count('\nbackend = "auto"') == 1, "the example's forwarder backend is no longer auto: update this"
    config = topology.workdir / "router.toml"
    config.write_text(shipped.replace('\nbackend = "auto"', f'\nbackend = "{forwarder_backend}"'))
    rundir = topology.workdir / "run"
    up = rtr.popen([*MGM, "up", "--config", str(config)], "mgm-up", env={"MGM_RUNDIR": str(rundir)})
    api = f"ipc://{rundir}/api"

    def protocols() -> set[int]:
        assert up.alive(), up.log()
        proc = rtr.run(*MGM, "show", "protocols", "--json", "--api", api, check=False)
        return {e["protocol_id"] for e in json.loads(proc.stdout)["entries"]} if proc.returncode == 0 else set()

    wait_until(lambda: protocols() == {10, 10006, 65001}, START_WAIT, "igmp, static and the forwarder registered")
    wait_until(lambda: up.log().count("igmp: running IGMPv") == 3, START_WAIT, "igmp on eth0, eth1, eth2")

    joined = lan_rx.receiver("239.93.0.1", 6093)  # eth2's host joins nothing
    fixed = far.receiver("239.10.0.1", 6010)  # the (S,G) static route's group; no IGMP on eth4
    joined.wait_joined()
    fixed.wait_joined()
    lan_snd.spawn(send_udp, "239.93.0.1", 6093, 100_000, interval=0.005, name="send-lan")
    feed.spawn(send_udp, "239.10.0.1", 6010, 100_000, interval=0.005, source="192.0.2.10", name="send-feed")
    joined.wait_count(20, WAIT)
    fixed.wait_count(20, WAIT)
    out = KernelView(rtr, forwarder_backend).out_packets()
    assert out["eth1"] > 0 and out["eth4"] > 0, out
    assert out["eth2"] == 0 and out["eth0"] == 0 and out["eth3"] == 0, out
    assert up.alive(), up.log()

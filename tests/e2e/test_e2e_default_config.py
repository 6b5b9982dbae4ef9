"""`mgm up` without --config: IGMP and the Linux forwarder where the machine can, else the simulator, said so.

The decision is a pure function (`default_config`), tested for each branch.
The namespace tests run `mgm up` with no --config as root on a router with
veth links and ask `mgm show` what runs: the backend the kernel offers (MRT
where MRT_INIT works, else nftables), forwarding for real; the simulator
when another process holds the routing socket (needs MRT: marked `mroute`),
and, where the kernel has no MRT, when libnftables cannot be loaded.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from e2e_stack import FORWARDER_PROTOCOL_ID, IGMP_PROTOCOL_ID, MGM, START_WAIT, WAIT
from kernel_view import KernelView
from netns import Namespace, Topology, send_udp, wait_until

from mgm.core.runtime.config import (
    DEFAULT_SOURCE,
    IFF_LOOPBACK,
    IFF_MULTICAST,
    IFF_UP,
    default_config,
    load,
    loads,
    multicast_interfaces,
)
from mgm.plugins.forwarder.mroute import MrouteError, MrouteSocket
from mgm.plugins.supervisor import interface_flags

UP_MC = IFF_UP | IFF_MULTICAST


def test_root_with_the_routing_socket_runs_igmp_and_the_linux_forwarder_on_the_interfaces() -> None:
    choice = default_config(True, "mrt", None, ["eth1", "eth2"])
    config = loads(choice.text, DEFAULT_SOURCE)
    assert sorted(config.plugins) == ["forwarder", "igmp"]
    assert [ref.name_or_index for ref in config.plugins["igmp"].interfaces] == ["eth1", "eth2"]
    assert config.plugins["forwarder"].interfaces == ()  # the forwarder owns nothing: VIFs follow the manager
    assert config.plugins["forwarder"].table["backend"] == "mrt"  # pinned: a restarted forwarder does not decide anew
    assert not choice.simulated
    assert "eth1, eth2" in choice.reason and "Linux kernel forwarder" in choice.reason
    assert "multicast routing table (MRT)" in choice.reason


def test_a_kernel_without_multicast_routing_forwards_through_nftables_and_says_why() -> None:
    choice = default_config(True, "nft", "the kernel has no multicast routing table (CONFIG_IP_MROUTE)", ["eth1"])
    config = loads(choice.text, DEFAULT_SOURCE)
    assert sorted(config.plugins) == ["forwarder", "igmp"]
    assert config.plugins["forwarder"].table["backend"] == "nft"
    assert not choice.simulated
    assert "nftables (the kernel has no multicast routing table (CONFIG_IP_MROUTE))" in choice.reason


@pytest.mark.parametrize(
    ("is_root", "backend", "mrt_error", "interfaces", "why"),
    [
        (False, None, None, ["eth1"], "not root"),
        (True, None, "MRT_INIT failed: another process already holds it", ["eth1"], "another process already holds it"),
        (True, "mrt", None, [], "no interface is up, multicast-capable and not loopback"),
        (True, None, "no IP_MROUTE; and nftables cannot be used: libnftables is not installed", ["eth1"],
         "libnftables is not installed"),
    ],
)
def test_otherwise_the_simulated_forwarder_alone_and_the_reason(
    is_root: bool, backend: str | None, mrt_error: str | None, interfaces: list[str], why: str
) -> None:
    choice = default_config(is_root, backend, mrt_error, interfaces)
    config = loads(choice.text, DEFAULT_SOURCE)
    assert list(config.plugins) == ["forwarder-sim"]
    assert choice.simulated
    assert "SIMULATED" in choice.reason and why in choice.reason


def test_a_multi_line_reason_stays_a_toml_comment() -> None:
    choice = default_config(True, None, "line one\n[plugins.igmp]\nline three", ["eth1"])
    assert list(loads(choice.text).plugins) == ["forwarder-sim"]


def test_interface_names_that_need_quoting_survive() -> None:
    choice = default_config(True, "mrt", None, ['we"ird', "vlan.10"])
    assert [r.name_or_index for r in loads(choice.text).plugins["igmp"].interfaces] == ['we"ird', "vlan.10"]


def test_only_up_multicast_non_loopback_interfaces_count() -> None:
    flags = {
        "lo": UP_MC | IFF_LOOPBACK,
        "eth0": UP_MC,
        "down0": IFF_MULTICAST,
        "tun0": IFF_UP,  # point-to-point without multicast
        "a1": UP_MC | 0x40,  # other flags (RUNNING) do not matter
    }
    assert multicast_interfaces(flags) == ["a1", "eth0"]


def test_interface_flags_come_from_the_link_watcher() -> None:
    assert asyncio.run(interface_flags())["lo"] & (UP_MC | IFF_LOOPBACK) == IFF_UP | IFF_LOOPBACK


def test_load_without_a_file_is_still_the_manager_alone() -> None:
    """`mgm plugin NAME` and `mgm manager` without --config read the base; only `mgm up` probes the machine."""
    assert dict(load(None).plugins) == {}


def hold_the_routing_socket() -> None:
    """Run inside a namespace: take its multicast routing socket (as another daemon would) until killed."""
    with MrouteSocket(upcall_filter=False):
        print("holding", flush=True)
        while True:
            time.sleep(60)


def kernel_has_mrt() -> bool:
    """Run inside a namespace: whether MRT_INIT works there (False: the kernel has no IP_MROUTE)."""
    from mgm.plugins.forwarder.linux import KERNEL_LACKS

    try:
        MrouteSocket(upcall_filter=False).close()
    except MrouteError as exc:
        if exc.errno in KERNEL_LACKS:
            return False
        raise
    return True


def show(router: Namespace, api: str, table: str) -> list[dict[str, Any]]:
    """``mgm show TABLE --json`` in the router namespace; [] while the manager does not answer yet."""
    proc = router.run(*MGM, "show", table, "--json", "--api", api, check=False)
    return list(json.loads(proc.stdout)["entries"]) if proc.returncode == 0 else []


@pytest.mark.netns
def test_mgm_up_without_config_runs_igmp_and_the_forwarder_on_every_interface(topology: Topology) -> None:
    """On the backend the kernel offers (MRT where MRT_INIT works, else nftables), forwarding a join for real."""
    router, h1, h2 = topology.namespaces("rtr", "h1", "h2")
    link1 = topology.link(router, h1, "10.91.1.1/24", "10.91.1.2/24")
    topology.link(router, h2, "10.91.2.1/24", "10.91.2.2/24")
    h1.multicast_route(link1.b_if)
    backend = "mrt" if router.call(kernel_has_mrt) else "nft"
    rundir = topology.workdir / "run"
    # the default endpoints live under MGM_RUNDIR: a private one, so no other manager is disturbed
    up = router.popen([*MGM, "up"], "mgm-up", env={"MGM_RUNDIR": str(rundir)})
    api = f"ipc://{rundir}/api"
    r1, r2 = router.if_index("r1"), router.if_index("r2")

    def owned() -> bool:
        assert up.alive(), up.log()
        owners = {e["if_index"]: (e.get("owner") or {}).get("protocol_id") for e in show(router, api, "interfaces")}
        return owners.get(r1) == owners.get(r2) == IGMP_PROTOCOL_ID

    wait_until(owned, START_WAIT, "igmp to own r1 and r2")
    protocols = {e["protocol_id"]: e["name"] for e in show(router, api, "protocols")}
    assert protocols == {IGMP_PROTOCOL_ID: "igmp", FORWARDER_PROTOCOL_ID: f"forwarder ({backend})"}, protocols
    how = "the kernel's multicast routing table (MRT)" if backend == "mrt" else "nftables"
    assert f"IGMP and the Linux kernel forwarder on r1, r2, forwarding through {how}" in up.log()
    assert f"backend {backend}: " in up.log()
    assert "SIMULATED" not in up.log()

    # and it forwards: h2 joins, h1's packets reach it through the kernel
    kernel = KernelView(router, backend)
    wait_until(lambda: kernel.interfaces() == {"r1", "r2"}, START_WAIT, f"r1 and r2 installed ({backend})")
    rx = h2.receiver("239.91.0.1", 6091)
    rx.wait_joined()
    h1.spawn(send_udp, "239.91.0.1", 6091, 100_000, interval=0.01, source="10.91.1.2", name="send")
    with topology.on_timeout("the default configuration did not forward"):
        rx.wait_count(10, WAIT)
    assert kernel.oil("10.91.1.2", "239.91.0.1") == {"r2"}
    assert up.alive(), up.log()


@pytest.mark.netns
@pytest.mark.mroute  # the holder takes MRT_INIT, so that `mgm up` finds it taken
def test_mgm_up_without_config_says_why_it_runs_the_simulated_forwarder(topology: Topology) -> None:
    """Another process holds the routing socket: `mgm up` runs the simulated forwarder alone and says why."""
    router, h1 = topology.namespaces("rtr", "h1")
    topology.link(router, h1, "10.91.3.1/24", "10.91.3.2/24")
    holder = router.spawn(hold_the_routing_socket, name="holder")
    wait_until(lambda: "holding" in holder.log() or not holder.alive(), START_WAIT, "the other routing socket")
    assert holder.alive(), holder.log()
    rundir = topology.workdir / "run"
    up = router.popen([*MGM, "up"], "mgm-up", env={"MGM_RUNDIR": str(rundir)})
    api = f"ipc://{rundir}/api"

    def registered() -> list[dict[str, Any]]:
        assert up.alive(), up.log()
        return show(router, api, "protocols")

    protocols = wait_until(registered, START_WAIT, "the simulated forwarder registered")
    assert [(p["protocol_id"], p["name"]) for p in protocols] == [(FORWARDER_PROTOCOL_ID, "forwarder (simulated)")]
    assert "WARNING" in up.log() and "the SIMULATED forwarder" in up.log()
    assert "another process already holds the multicast routing socket" in up.log()
    assert show(router, api, "interfaces") == []  # no IGMP: nobody owns r1


@pytest.mark.netns
def test_mgm_up_without_config_and_without_libnftables_takes_mrt_else_says_why_it_simulates(
    topology: Topology,
) -> None:
    """libnftables cannot be loaded (an empty libnftables.so.1 comes first on LD_LIBRARY_PATH): a kernel with MRT
    does not need it; on one without, `mgm up` runs the simulated forwarder alone and says why."""
    router, h1 = topology.namespaces("rtr", "h1")
    topology.link(router, h1, "10.91.4.1/24", "10.91.4.2/24")
    has_mrt = router.call(kernel_has_mrt)
    broken = topology.workdir / "lib"
    broken.mkdir()
    (broken / "libnftables.so.1").write_bytes(b"")
    rundir = topology.workdir / "run"
    up = router.popen([*MGM, "up"], "mgm-up", env={"MGM_RUNDIR": str(rundir), "LD_LIBRARY_PATH": str(broken)})
    api = f"ipc://{rundir}/api"

    def forwarder() -> list[str]:
        assert up.alive(), up.log()
        return [p["name"] for p in show(router, api, "protocols") if p["protocol_id"] == FORWARDER_PROTOCOL_ID]

    names = wait_until(forwarder, START_WAIT, "the forwarder registered")
    if has_mrt:
        assert names == ["forwarder (mrt)"], up.log()
        assert "forwarding through the kernel's multicast routing table (MRT)" in up.log()
        assert "SIMULATED" not in up.log()
    else:
        assert names == ["forwarder (simulated)"], up.log()
        assert "WARNING" in up.log() and "the SIMULATED forwarder" in up.log()
        assert "the kernel offers no forwarding backend" in up.log()
        assert "and nftables cannot be used" in up.log() and "libnftables is not installed" in up.log()
        assert show(router, api, "interfaces") == []  # no IGMP: nobody owns r1

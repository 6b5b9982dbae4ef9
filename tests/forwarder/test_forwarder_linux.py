"""The Linux forwarder under a real `mgm manager`, with real traffic through a router namespace, on each backend.

    snd eth0 10.1.0.2 --- r1 [rtr] r2 --- eth0 rcv1
                                   r3 --- eth0 rcv2

The manager and a routing test plugin (test-routing-a, owning r1, r2, r3
by if_index and adding memberships when told) run in the root namespace;
the forwarder runs inside the router namespace (`ip netns exec`), talking
to the manager over ipc (the filesystem is shared).  Every test runs once
per backend (`forwarder_backend`: MRT where the kernel has it, nftables),
and reads what the kernel forwards through `KernelView`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_view import KernelEntry, KernelView
from mgm_testplugins.control import Control
from mgm_testplugins.processes import MGM, ManagerProc, PluginProc, Proc, toml_config
from netns import Namespace, Receiver, Topology, send_udp, wait_until

from mgm.bus.status import MgmError

pytestmark = pytest.mark.netns

S, G, PORT = "10.1.0.2", "239.3.3.3", 7000


@dataclass
class Net:
    sender: Namespace
    router: Namespace
    rcv1: Namespace
    rx1: Receiver
    rx2: Receiver
    r1: int
    r2: int
    r3: int
    routing: Control
    kernel: KernelView

    @property
    def backend(self) -> str:
        return self.kernel.backend

    def vifs(self) -> set[str]:
        """The interfaces the forwarder installed (MRT: VIFs)."""
        return self.kernel.interfaces()

    def entry(self) -> KernelEntry | None:
        return self.kernel.entry(S, G)

    def out_vifs(self) -> set[str] | None:
        return self.kernel.oil(S, G)

    def send(self, count: int) -> None:
        self.sender.call(send_udp, G, PORT, count, interval=0.002)


def start_forwarder(net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc], name: str = "fwd",
                    **table: object) -> PluginProc:  # fmt: skip
    ns = net.router
    config_path = ipc_dir / f"{name}.toml"
    config_path.write_text(toml_config({"forwarder": {"counters_interval": 0.2, "backend": net.backend, **table}}))
    argv = ["ip", "netns", "exec", ns.name, *MGM, "plugin", "forwarder", "--config", str(config_path),
            "--api", manager.api, "--events", manager.events, "--log-level", "debug"]  # fmt: skip
    proc = PluginProc(name, argv, ipc_dir / f"{name}.log", config_path=config_path)
    proc.start()
    procs.append(proc)
    return proc


@pytest.fixture
def net(
    topology: Topology, manager: ManagerProc, start_plugin: Callable[..., PluginProc], forwarder_backend: str
) -> Net:
    sender, router, rcv1, rcv2 = topology.namespaces("snd", "rtr", "rc1", "rc2")
    up = topology.link(sender, router, f"{S}/24", "10.1.0.1/24")
    topology.link(router, rcv1, "10.2.0.1/24", "10.2.0.2/24")
    topology.link(router, rcv2, "10.3.0.1/24", "10.3.0.2/24")
    sender.multicast_route(up.a_if)
    r1, r2, r3 = (router.if_index(n) for n in ("r1", "r2", "r3"))
    routing = start_plugin("test-routing-a", {"protocol_id": 10006, "component_id": 1, "interfaces": [r1, r2, r3]})
    assert routing.control is not None
    rx1, rx2 = rcv1.receiver(G, PORT), rcv2.receiver(G, PORT)
    rx1.wait_joined()
    rx2.wait_joined()
    return Net(sender, router, rcv1, rx1, rx2, r1, r2, r3, routing.control, KernelView(router, forwarder_backend))


def _wait_vifs(net: Net, proc: PluginProc) -> None:
    def ready() -> bool:
        assert proc.alive(), f"the forwarder exited:\n{proc.log()}"
        return net.vifs() == {"r1", "r2", "r3"}

    wait_until(ready, 15, "the forwarder's three interfaces in the kernel")


def forward_out_of_r2(net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc], **table: object) -> PluginProc:
    """A membership on r2, the forwarder with its interfaces in place, and a first packet's MFC entry out of r2."""
    net.routing.call("add_membership", source="0.0.0.0", group=G, if_index=net.r2)
    fwd = start_forwarder(net, manager, ipc_dir, procs, **table)
    _wait_vifs(net, fwd)
    net.send(1)
    wait_until(lambda: net.out_vifs() == {"r2"}, 10, "the MFC entry out of r2")
    return fwd


def test_traffic_follows_the_memberships(net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]) -> None:
    # The first packet of a new (S,G): upcall -> new_packet -> MFE -> MFC entry, and the packet held
    # meanwhile is sent on (by the kernel with MRT, by the forwarder with nftables).
    fwd = forward_out_of_r2(net, manager, ipc_dir, procs)
    mfe = manager.request("get_mfe", {"source": S, "group": G})["mfe"]
    assert (mfe["in_if_index"], [o["if_index"] for o in mfe["oil"]]) == (net.r1, [net.r2])
    net.rx1.wait_count(1)
    net.send(10)
    net.rx1.wait_count(11)
    assert net.rx2.count() == 0  # joined on its host, but no membership on r3: never forwarded there

    # A membership on r3: the kernel's output list grows at once.
    net.routing.call("add_membership", source="0.0.0.0", group=G, if_index=net.r3)
    wait_until(lambda: net.out_vifs() == {"r2", "r3"}, 10, "r3 in the kernel's output list")
    net.send(5)
    net.rx2.wait_count(5)
    net.rx1.wait_count(16)

    # The membership on r2 removed: the kernel stops sending there.
    net.routing.call("delete_membership", source="0.0.0.0", group=G, if_index=net.r2)
    wait_until(lambda: net.out_vifs() == {"r3"}, 10, "r2 out of the kernel's output list")
    net.send(5)
    net.rx2.wait_count(10)
    assert net.rx1.count() == 16

    # The kernel's counters reach the manager's MFE statistics.
    def counted() -> bool:
        got = manager.request("get_mfe", {"source": S, "group": G, "stats": 0})["mfe"]
        return bool(got["in_packets"] == 21)

    wait_until(counted, 10, "the manager's MFE to count 21 packets")
    entry = net.entry()
    assert entry is not None and entry.packets == 21
    stats = manager.request("get_mfe", {"source": S, "group": G, "stats": 0})["mfe"]
    assert stats["in_bytes"] == entry.bytes
    assert {o["if_index"]: o["out_packets"] for o in stats["oil"]} == {net.r3: 10}

    # Stopping the forwarder removes its VIFs and entries (static ones, or a table, which the kernel would keep).
    assert fwd.stop() == 0
    assert net.vifs() == set() and net.entry() is None


def test_a_killed_forwarders_entries_forward_again_under_its_successor_which_adopts_them(
    net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]
) -> None:
    fwd = forward_out_of_r2(net, manager, ipc_dir, procs)
    net.rx1.wait_count(1)
    vifs = net.vifs()

    fwd.send_signal(signal.SIGKILL)
    fwd.wait(10)
    # Static VIFs and entries, or our nftables table: the kernel keeps them without their process (MRT
    # forwards nothing until the next MRT_INIT; nftables goes on forwarding meanwhile).
    assert net.vifs() == vifs and net.out_vifs() == {"r2"}
    if net.backend == "nft":
        net.send(2)
        net.rx1.wait_count(3)

    second = start_forwarder(net, manager, ipc_dir, procs, name="fwd2")
    wait_until(lambda: "adopted what a previous forwarder left on the dataplane: 3 interface(s)" in second.log(), 15,
               "the new forwarder to adopt the kernel's interfaces and entry")  # fmt: skip
    out = net.kernel.out_packets()["r2"]
    before = net.rx1.count()
    net.send(5)
    net.rx1.wait_count(before + 5)
    wait_until(lambda: net.kernel.out_packets()["r2"] >= out + 5, 10, "r2 counting the 5 packets out")
    wait_until(lambda: "resync:" in second.log(), 15, "the new forwarder to register (once the old one's lapsed)")
    assert net.vifs() == vifs
    assert f"MFC ({S}, {G}) installed" not in second.log() and f"MFC ({S}, {G}) deleted" not in second.log()
    assert " added on " not in second.log()  # no VIF added again
    net.send(5)
    net.rx1.wait_count(before + 10)
    assert second.stop() == 0
    assert net.vifs() == set() and net.entry() is None


def test_a_packet_before_any_receiver_makes_a_negative_entry_that_a_join_opens(
    net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]
) -> None:
    fwd = start_forwarder(net, manager, ipc_dir, procs)
    _wait_vifs(net, fwd)
    net.send(1)
    wait_until(lambda: net.out_vifs() == set(), 10, "a negative MFC entry")
    net.routing.call("add_membership", source="0.0.0.0", group=G, if_index=net.r2)
    wait_until(lambda: net.out_vifs() == {"r2"}, 10, "r2 in the kernel's output list")
    net.send(3)
    net.rx1.wait_count(3)


def test_a_second_forwarder_in_the_namespace_exits_with_the_reason(
    net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]
) -> None:
    first = start_forwarder(net, manager, ipc_dir, procs)
    _wait_vifs(net, first)
    second = start_forwarder(net, manager, ipc_dir, procs, name="fwd2")
    assert second.wait(15) == 2
    log = second.log()
    if net.backend == "mrt":
        assert "another process already holds the multicast routing socket" in log and "pimd" in log
    else:
        assert "NFLOG group 28007 is bound by another process" in log and "nflog_group" in log
    assert first.alive() and net.vifs() == {"r1", "r2", "r3"}


def test_vifs_follow_ownership_and_links(net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]) -> None:
    net.routing.call("release", if_index=net.r3)
    fwd = start_forwarder(net, manager, ipc_dir, procs)
    wait_until(lambda: net.vifs() == {"r1", "r2"}, 15, "VIFs on the two owned interfaces")
    net.routing.call("take", if_index=net.r3)  # an interface_owned event: a VIF at once
    wait_until(lambda: net.vifs() == {"r1", "r2", "r3"}, 10, "a VIF on r3 once owned")
    net.routing.call("release", if_index=net.r3)
    wait_until(lambda: net.vifs() == {"r1", "r2"}, 10, "r3's VIF gone once released")
    net.routing.call("add_membership", source="0.0.0.0", group=G, if_index=net.r2)
    net.send(1)
    wait_until(lambda: net.out_vifs() == {"r2"}, 10, "the MFC entry out of r2")
    net.router.ip("link", "del", "r2")  # netlink: the link (and with it the kernel's VIF) is gone
    wait_until(lambda: "went away" in fwd.log(), 10, "the forwarder to notice r2 went away")
    wait_until(lambda: net.out_vifs() == set(), 10, "the entry without r2")
    assert fwd.alive()


def test_forwarding_goes_on_across_a_manager_restart(
    net: Net, manager: ManagerProc, start_manager: Callable[..., ManagerProc], ipc_dir: Path, procs: list[Proc]
) -> None:
    fwd = forward_out_of_r2(net, manager, ipc_dir, procs, restart_grace=1.0)
    net.rx1.wait_count(1)

    assert manager.stop() == 0
    net.send(5)  # nobody manages, the kernel forwards on
    net.rx1.wait_count(6)

    second = start_manager()

    def mfe_again() -> dict[str, object] | None:
        try:
            found: dict[str, object] = second.request("get_mfe", {"source": S, "group": G})["mfe"]
        except MgmError:
            return None
        return found if found["oil"] == [{"if_index": net.r2, "next_hop": "0.0.0.0"}] else None

    wait_until(mfe_again, 20, "the new manager to know the MFE again, with the replayed membership")
    net.send(5)
    net.rx1.wait_count(11)
    assert f"MFC ({S}, {G}) deleted" not in fwd.log()  # the entry was kept, never removed and re-added
    assert "kept over the manager restart" in fwd.log()


def test_a_packet_on_the_wrong_interface_reaches_that_interfaces_owner(
    net: Net, manager: ManagerProc, ipc_dir: Path, procs: list[Proc]
) -> None:
    forward_out_of_r2(net, manager, ipc_dir, procs)
    # The receiver's host sends the same (S,G) towards the router, into r2.
    net.rcv1.ip("addr", "add", f"{S}/32", "dev", "eth0")
    net.rcv1.multicast_route("eth0")
    net.rcv1.call(send_udp, G, PORT, 1, source=S)
    call = net.routing.wait_for_call("mgm_wrong_if", source=S, group=G)
    assert call["interface"] == [net.r2, "0.0.0.0"]
    entry = net.entry()
    assert entry is not None and entry.wrong_if == 1

"""Crashes under traffic, on the real stack (see res_scenario): a plugin, the manager, the forwarder.

Each test SIGKILLs one child of `mgm up` while a sender streams to two
joined hosts every 5 ms, and checks what the crash must and must not do,
once per forwarder backend the kernel offers (`forwarder_backend`).  The
times are printed (run with -s); bench/restart_gaps.py reports them.
"""

from __future__ import annotations

import pytest
from e2e_stack import S1
from netns import Topology
from res_scenario import G, forwarder_restart, manager_restart, plugin_death, setup

pytestmark = pytest.mark.netns


def test_a_killed_igmp_is_cleaned_up_by_the_manager_then_restarted_and_its_memberships_return(
    topology: Topology, forwarder_backend: str
) -> None:
    flow = setup(topology, backend=forwarder_backend)
    r2, r3 = flow.if_index["r2"], flow.if_index["r3"]
    assert flow.igmp_memberships() == {("0.0.0.0", G, r2), ("0.0.0.0", G, r3)}
    result = plugin_death(flow)
    print(f"\nplugin death: detected after {result.detection:.2f} s, memberships back after {result.recovered:.2f} s")
    # The manager did what a well-behaved igmp would have: every membership deleted, then the
    # interfaces released, then the deregistration (MGM-SPEC, Registration).
    assert result.deleted_before_deregistration == result.memberships_before
    assert result.order[-1] == "protocol_deregistered"
    last_delete = max(i for i, kind in enumerate(result.order) if kind == "membership_deleted")
    first_release = min(i for i, kind in enumerate(result.order) if kind == "interface_released")
    assert last_delete < first_release
    assert result.oil_after_cleanup == []  # the MFE lost its outgoing interfaces with the memberships
    # plugin_death waited for the restarted igmp's memberships with the kernel's entries matching the manager's.
    assert flow.agree() is not None
    flow.wait_flowing(flow.newest())  # and the stream reaches both hosts again
    flow.stack.alive()


def test_a_killed_manager_restarts_and_the_established_flow_loses_no_packet(
    topology: Topology, forwarder_backend: str
) -> None:
    flow = setup(topology, backend=forwarder_backend, restart_grace=2.0)
    result = manager_restart(flow)
    print(f"\nmanager restart: answering after {result.answered:.2f} s, converged after {result.convergence:.2f} s, "
          f"lost {[len(x) for x in result.lost]}")  # fmt: skip
    assert result.epochs[0] != result.epochs[1]
    assert result.lost == [[], []], "the kernel's entries must forward on while the manager restarts"
    forwarder_log = "\n".join(p.log() for p in topology.processes if p.name == "mgm-up")
    assert f"MFC ({S1}, {G}) deleted" not in forwarder_log  # reconciled, never flushed and re-added
    flow.stack.alive()


def test_a_killed_forwarders_kernel_entries_forward_again_once_it_restarts_and_are_adopted_not_added_again(
    topology: Topology, forwarder_backend: str
) -> None:
    flow = setup(topology, backend=forwarder_backend)
    result = forwarder_restart(flow)
    print(f"\nforwarder restart ({forwarder_backend}): traffic back after {result.gap:.2f} s, "
          f"lost {result.lost} packets")  # fmt: skip
    # forwarder_restart itself failed unless the kernel's counters out of r2 and r3 moved again after the restart.
    assert result.interfaces_after == result.interfaces_before == {"r1", "r2", "r3"}  # the kernel kept them
    assert "adopted what a previous forwarder left on the dataplane: 3 interface(s)" in result.log
    assert "1 entr(ies)" in result.log
    if forwarder_backend == "nft":
        assert result.lost == [0, 0], "the nftables table forwards on while no forwarder runs"
    # Nothing was removed and added again: the first resync found the adopted entry right.
    for line in (f"MFC ({S1}, {G}) deleted", f"MFC ({S1}, {G}) installed", f"MFC ({S1}, {G}) updated",
                 "added on r1", "added on r2", "added on r3", "removed from"):  # fmt: skip
        assert line not in result.log
    assert flow.converged()
    flow.stack.alive()

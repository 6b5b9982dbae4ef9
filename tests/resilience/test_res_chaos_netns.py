"""Chaos on the real stack: hosts join and leave while igmp, the manager and the forwarder are SIGKILLed.

The stack of res_scenario (`mgm up` with igmp and the Linux forwarder in a
router, two hosts), with a sender streaming to each of three groups.  A
seeded random run makes the hosts join and leave the groups with ordinary
sockets (real IGMP) and, at steps drawn from the same seed, SIGKILLs igmp,
the manager and the forwarder once each (`mgm up` starts them again).  At
the end, within a deadline: the manager's memberships are exactly the
hosts' joins (igmp's view: its replay and the hosts' answers to its queries),
each MFE's outgoing list is the joined hosts' interfaces, and the kernel's
entries are the manager's MFE table.  Once per forwarder backend the
kernel offers (`forwarder_backend`).

The seed is printed; MGM_CHAOS_SEED=N repeats a run.
"""

from __future__ import annotations

import os
import random

import pytest
from e2e_stack import S1
from netns import Receiver, Topology, send_udp, wait_until
from res_scenario import PORT, STREAM_COUNT, setup

pytestmark = pytest.mark.netns

GROUPS = ["239.78.1.1", "239.78.1.2", "239.78.1.3"]
STEPS = 16
CONVERGE = 40.0


def test_hosts_churn_while_igmp_the_manager_and_the_forwarder_are_killed_and_all_ends_in_agreement(
    topology: Topology, forwarder_backend: str
) -> None:
    seed = int(os.environ.get("MGM_CHAOS_SEED") or random.randrange(2**32))
    print(f"\nchaos (namespaces) seed {seed} (MGM_CHAOS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    flow = setup(topology, backend=forwarder_backend, restart_grace=2.0)
    for g in GROUPS:
        flow.stack.sender.spawn(send_udp, g, PORT, STREAM_COUNT, interval=0.02, source=S1, name=f"send-{g}")
    host_if = [flow.if_index["r2"], flow.if_index["r3"]]
    joined: dict[tuple[int, str], Receiver] = {}
    kills = dict(zip(rng.sample(range(2, STEPS - 2), 3), ["igmp", "manager", "forwarder"], strict=True))
    done = []
    for step in range(STEPS):
        if step in kills:
            child = kills[step]
            old, _ = flow.kill(child)
            flow.wait_restarted(child, old)
            done.append(child)
            continue
        host, group = rng.randrange(2), rng.choice(GROUPS)
        rx = joined.pop((host, group), None)
        if rx is not None:
            rx.leave()
            done.append(f"h{host + 1} left {group}")
        else:
            joined[(host, group)] = flow.stack.receiver(host, group, PORT)
            done.append(f"h{host + 1} joined {group}")
    print("chaos (namespaces): " + "; ".join(done))
    flow.stack.alive()

    want_members = {("0.0.0.0", g, host_if[h]) for h, g in joined} | {("0.0.0.0", "239.77.1.1", i) for i in host_if}

    def agreed() -> bool:
        """The memberships as wanted, the tables agreeing, each group's MFE out of its joined hosts (none: no MFE,
        or a negative one)."""
        table = flow.agree() if flow.igmp_memberships() == want_members else None
        return table is not None and all(
            table.get((S1, g), (0, frozenset()))[1] == frozenset(host_if[h] for h, jg in joined if jg == g)
            for g in GROUPS
        )

    last: list[object] = []

    def check() -> bool:
        ok = agreed()
        last[:] = [flow.igmp_memberships(), flow.manager_table(), flow.kernel_table()]
        return ok

    try:
        wait_until(check, CONVERGE, "memberships = the hosts' joins, OILs = their interfaces, kernel = manager")
    except TimeoutError:
        raise AssertionError(f"seed {seed}: no agreement; want {sorted(want_members)}\n"
                             f"igmp memberships / manager MFEs / kernel entries: {last}") from None  # fmt: skip
    for rx in joined.values():  # and traffic reaches every joined host
        rx.wait_count(rx.count() + 5, 20)

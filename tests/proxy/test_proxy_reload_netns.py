"""SIGHUP to the proxy's plugin process under `mgm up`: a new filter takes effect without a restart.

    snd (eth0) --- (r1) rtr (r2) --- (eth0) hrx
       upstream           downstream: first deny GB's range, then GA's

The sender floods both groups on the upstream link; the receiver joins
both.  A broken file is refused with its line and changes nothing; the
fixed file swaps the groups: GB starts reaching the receiver and is joined
upstream, GA stops and is left.  Once per forwarder backend the kernel
offers (`forwarder_backend`).  Needs root; under CI=true a missing root
fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from netns import (
    Topology,
    send_udp,
    wait_until,
)
from test_proxy_netns import WAIT, igmp_members, probe, proxy_tables, start_router, upstream_memberships

pytestmark = pytest.mark.netns

SRC = "10.75.0.2"
GA, PA = "239.75.1.1", 5751
GB, PB = "239.75.2.2", 5752
SENDS = 100_000  # outlives the test: the teardown kills it
DENY_GB = '[{ interface = "r2", deny = ["239.75.2.0/24"] }]'


def test_sighup_applies_a_new_filter_and_refuses_a_broken_file(topology: Topology, forwarder_backend: str) -> None:
    snd, rtr, hrx = topology.namespaces("snd", "rtr", "hrx")
    topology.link(snd, rtr, f"{SRC}/24", "10.75.0.1/24")
    topology.link(rtr, hrx, "10.75.1.1/24", "10.75.1.2/24")
    snd.multicast_route("eth0")
    up = start_router(rtr, proxy_tables(downstream=DENY_GB), backend=forwarder_backend)
    config = topology.workdir / "router.toml"
    pid = int(re.findall(r"proxy started \(pid (\d+)\)", up.log())[0])
    manager = probe(topology)
    r2 = rtr.if_index("r2")
    rx_a, rx_b = hrx.receiver(GA, PA, name="rx-a"), hrx.receiver(GB, PB, name="rx-b")
    for rx in (rx_a, rx_b):
        rx.wait_joined()
    wanted = {("0.0.0.0", GA, r2), ("0.0.0.0", GB, r2)}
    wait_until(lambda: wanted <= igmp_members(manager), WAIT, "IGMP's memberships of both groups")
    snd.spawn(send_udp, GA, PA, SENDS, interval=0.01, source=SRC, name="send-a")
    snd.spawn(send_udp, GB, PB, SENDS, interval=0.01, source=SRC, name="send-b")
    rx_a.wait_count(10, timeout=WAIT)
    rx_a.wait_count(rx_a.count() + 20, timeout=WAIT)  # GB went by the router all along
    assert rx_b.count() == 0, "GB is denied on r2"
    held = rtr.call(upstream_memberships, "r1")["groups"]
    assert GA in held and GB not in held, held

    # a broken file: refused with its line, the filter in force stays
    text = config.read_text()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("downstream"))
    config.write_text(text.replace('"239.75.2.0/24"', '"10.75.0.0/16"'))
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "proxy: reload refused" in up.log(), WAIT, "the proxy to refuse the broken file")
    assert f"{config}:{line}: plugins.proxy.downstream[0]: '10.75.0.0/16' is not inside 224.0.0.0/4" in up.log()
    rx_a.wait_count(rx_a.count() + 20, timeout=WAIT)
    assert rx_b.count() == 0

    # the groups swapped: GB reaches the receiver and is joined upstream, GA stops and is left
    config.write_text(text.replace('"239.75.2.0/24"', '"239.75.1.0/24"'))
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "proxy: reloaded" in up.log(), WAIT, "the proxy to reload")
    with topology.on_timeout("GB allowed by the new file did not arrive"):
        rx_b.wait_count(10, timeout=WAIT)
    wait_until(lambda: GB in (g := rtr.call(upstream_memberships, "r1")["groups"]) and GA not in g, WAIT,
               "GB joined and GA left upstream")  # fmt: skip

    def ga_out_of_r2() -> bool:
        mfe = manager.request("get_mfe", {"source": SRC, "group": GA})["mfe"]
        return r2 not in {e["if_index"] for e in mfe["oil"]}

    wait_until(ga_out_of_r2, WAIT, "r2 out of GA's outgoing interfaces")
    rx_b.wait_count(rx_b.count() + 5, timeout=WAIT)  # the kernel's entry follows the manager's within a packet or two
    settled = rx_a.count()
    rx_b.wait_count(rx_b.count() + 20, timeout=WAIT)
    assert rx_a.count() == settled, "GA still arrives after the reload denied it"
    assert len(re.findall(r"proxy started \(pid \d+\)", up.log())) == 1, "the proxy was restarted, not reloaded"

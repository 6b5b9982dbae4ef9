"""The shared namespace harness (tests/netns.py) does what the end-to-end tests rely on."""

from __future__ import annotations

import os
import subprocess

import pytest
from netns import Topology, remove_leftovers, require_root, send_udp


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


@pytest.mark.netns
def test_one_link_carries_multicast_to_a_joined_receiver_only(topology: Topology) -> None:
    sender, host = topology.namespaces("snd", "hst")
    link = topology.link(sender, host, "10.50.0.1/24", "10.50.0.2/24")
    assert (link.a_if, link.b_if) == ("eth0", "eth0")
    sender.multicast_route(link.a_if)
    any_source = host.receiver("239.5.5.5", 5005)
    right_source = host.receiver("232.5.5.5", 5006, source="10.50.0.1")
    wrong_source = host.receiver("232.5.5.5", 5006, source="10.50.0.99")
    for rx in (any_source, right_source, wrong_source):
        rx.wait_joined()
    assert sender.call(send_udp, "239.5.5.5", 5005, 5, interval=0) == 5
    assert sender.call(send_udp, "232.5.5.5", 5006, 4, interval=0) == 4
    assert any_source.wait_count(5) == 5
    assert right_source.wait_count(4, source="10.50.0.1") == 4
    # Delivered to the namespace together with right_source's, so by now they would be there.
    assert wrong_source.count() == 0
    assert [p["seq"] for p in any_source.packets()] == [0, 1, 2, 3, 4]


@pytest.mark.netns
def test_leave_stops_delivery_but_the_receiver_keeps_counting(topology: Topology) -> None:
    sender, host = topology.namespaces("snd", "hst")
    link = topology.link(sender, host, "10.51.0.1/24", "10.51.0.2/24")
    sender.multicast_route(link.a_if)
    rx = host.receiver("239.5.5.6", 5007)
    probe = host.receiver("239.5.5.7", 5008)  # a second group, to know when the later burst has arrived
    rx.wait_joined()
    probe.wait_joined()
    sender.call(send_udp, "239.5.5.6", 5007, 3, interval=0)
    rx.wait_count(3)
    rx.leave()
    sender.call(send_udp, "239.5.5.6", 5007, 3, interval=0)
    sender.call(send_udp, "239.5.5.7", 5008, 1, interval=0)
    probe.wait_count(1)
    assert rx.alive()
    assert rx.count() == 3


@pytest.mark.netns
def test_close_removes_namespaces_and_kills_processes() -> None:
    require_root()
    topo = Topology()
    try:
        a, b = topo.namespaces("ha", "hb")
        topo.link(a, b, "10.52.0.1/30", "10.52.0.2/30")
        assert "LOWER_UP" in a.ip("link", "show", "dev", "eth0")  # both ends up: the pair is joined
        assert "10.52.0.2/30" in b.ip("-4", "addr", "show", "dev", "eth0")
        sleeper = a.popen(["sleep", "600"])
        names = {a.name, b.name}
        assert names <= _netns_names()
    finally:
        topo.close()
    assert not names & _netns_names()
    assert not sleeper.alive()
    assert len(b.name.split("-")) == 4 and b.name.startswith(f"mgmtest-{os.getpid()}-")


@pytest.mark.netns
def test_leftovers_of_a_dead_run_are_removed() -> None:
    require_root()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone now: a crashed run's namespace carries such a pid
    name = f"mgmtest-{dead.pid}-1-stale"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in remove_leftovers()
        assert name not in _netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.mark.netns
def test_a_lan_floods_multicast_to_every_member(topology: Topology) -> None:
    sender, h1, h2 = topology.namespaces("snd", "h1", "h2")
    links = topology.lan([(sender, "10.53.0.1/24"), (h1, "10.53.0.2/24"), (h2, "10.53.0.3/24")])
    sender.multicast_route(links[0].a_if)
    receivers = [h1.receiver("239.5.5.8", 5009), h2.receiver("239.5.5.8", 5009)]
    for rx in receivers:
        rx.wait_joined()
    sender.call(send_udp, "239.5.5.8", 5009, 3, interval=0)
    assert [rx.wait_count(3) for rx in receivers] == [3, 3]


@pytest.mark.netns
def test_mgm_runs_inside_a_namespace(topology: Topology) -> None:
    (router,) = topology.namespaces("rtr")
    proc = router.mgm("--help", name="mgm-help")
    assert proc.popen.wait(30) == 0
    assert "manager" in proc.log()


def test_without_root_namespace_tests_skip_but_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_root()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_root()

"""The upstream going and coming back, without sockets: what a link event means, and what the plugin does then."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from proxy_fakes import FakeContext, FakeKernel, FakeReporter

from mgm.core.runtime.config import ConfigError, loads
from mgm.core.types import Interface
from mgm.plugins.links import link_of
from mgm.plugins.proxy import plugin as proxy_plugin
from mgm.plugins.proxy import settings
from mgm.plugins.proxy.links import DELLINK, NEWLINK, Action, Link, reconcile, upstream_event
from mgm.plugins.proxy.merge import ASM

ANY = "0.0.0.0"
UP = Link(5, "ppp0", True)
G1, G2, G3 = "239.1.1.1", "239.2.2.2", "239.3.3.3"
S1 = "10.0.0.1"


@pytest.mark.parametrize(
    ("configured", "current", "event", "link", "action"),
    [
        ("ppp0", UP, DELLINK, UP, Action.GONE),
        ("ppp0", UP, DELLINK, Link(6, "eth1", True), Action.NOTHING),  # another interface went
        ("ppp0", None, NEWLINK, Link(9, "ppp0", False), Action.BACK),  # any index, up or not
        ("ppp0", None, NEWLINK, Link(9, "ppp1", True), Action.NOTHING),
        ("ppp0", None, DELLINK, Link(9, "ppp0", True), Action.NOTHING),
        ("ppp0", UP, NEWLINK, Link(9, "ppp0", True), Action.NOTHING),  # the name again while ours exists
        ("ppp0", UP, NEWLINK, Link(5, "ppp0", False), Action.DOWN),
        ("ppp0", Link(5, "ppp0", False), NEWLINK, UP, Action.UP),
        ("ppp0", UP, NEWLINK, UP, Action.NOTHING),  # another flag changed
        ("ppp0", UP, NEWLINK, Link(5, "wan", True), Action.RENAMED),
        (5, None, NEWLINK, Link(5, "ppp0", True), Action.BACK),  # by index: that index only
        (5, None, NEWLINK, Link(9, "ppp0", True), Action.NOTHING),
        (5, UP, DELLINK, UP, Action.GONE),
    ],
)
def test_what_a_link_event_means_for_the_upstream(
    configured: str | int, current: Link | None, event: str, link: Link, action: Action
) -> None:
    assert upstream_event(configured, current, event, link) is action


def test_a_dump_after_subscribing_catches_what_happened_before() -> None:
    assert reconcile("ppp0", UP, {1: Link(1, "lo", True)}) == (Action.GONE, UP)
    assert reconcile("ppp0", UP, {5: UP}) == (Action.NOTHING, UP)
    assert reconcile("ppp0", UP, {5: Link(5, "ppp0", False)}) == (Action.DOWN, Link(5, "ppp0", False))
    assert reconcile("ppp0", None, {1: Link(1, "lo", True), 7: Link(7, "ppp0", True)}) == (
        Action.BACK,
        Link(7, "ppp0", True),
    )
    assert reconcile("ppp0", None, {1: Link(1, "lo", True)}) == (Action.NOTHING, None)


def test_a_netlink_message_becomes_a_link_up_only_with_carrier() -> None:
    assert link_of({"index": 3, "ifname": "r1", "flags": 0x1 | 0x10000}) == Link(3, "r1", True)
    assert link_of({"index": 3, "ifname": "r1", "flags": 0x1}) == Link(3, "r1", False)  # no carrier
    assert link_of({"index": 3, "ifname": "r1", "flags": 0x10000}) == Link(3, "r1", False)  # admin down


# --- the plugin, with a kernel, reporter and context stand-in ---------------------------------------------


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every UpstreamMemberships and Reporter the plugin opens is a stand-in (listed here)."""
    made: dict[str, list[Any]] = {"kernels": [], "reporters": []}

    def kernel(ifname: str, if_index: int) -> FakeKernel:
        made["kernels"].append(FakeKernel(ifname, if_index))
        return made["kernels"][-1]

    def reporter(ifname: str, if_index: int, on_error: Any = None) -> FakeReporter:
        made["reporters"].append(FakeReporter(ifname, if_index))
        return made["reporters"][-1]

    monkeypatch.setattr(proxy_plugin, "UpstreamMemberships", kernel)
    monkeypatch.setattr(proxy_plugin.Reporter, "open", staticmethod(reporter))
    monkeypatch.setattr(proxy_plugin, "has_ipv4", lambda ifname: True)
    return made


def running_proxy(forward_upstream: bool = True) -> Any:
    """A proxy with upstream ppp0 (if_index 5) and downstream d1 (2), d2 (3): G1 (*,G) on d1, G2 (S1,G2) on d2."""
    proxy = proxy_plugin.ProxyPlugin()
    proxy.settings = settings.Settings("ppp0", ("d1", "d2"), {}, forward_upstream, True)
    for index, name in ((2, "d1"), (3, "d2")):
        proxy.downstream[Interface(index)] = name
    proxy._open_upstream(UP)
    proxy.local(True, ANY, G1, Interface(2))
    proxy.local(True, S1, G2, Interface(3))
    return proxy


def test_upstream_deleted_closes_the_sockets_releases_it_and_keeps_the_downstream(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()
    kernel, reporter = fakes["kernels"][0], fakes["reporters"][0]
    assert proxy.joined == {G1: ASM, G2: frozenset({S1})}
    mgm = FakeContext()
    with caplog.at_level(logging.WARNING):
        asyncio.run(proxy.on_link(mgm, Action.GONE, UP))
    assert kernel.closed and reporter.closed
    assert mgm.calls == [("release", Interface(5))]
    assert proxy.upstream is None and proxy.kernel is None and proxy.joined == {}
    assert set(proxy.members) == {G1, G2}  # what the downstream wants is kept
    assert "upstream ppp0 (if_index 5) was deleted" in caplog.text
    assert "joined again when an interface named ppp0 appears" in caplog.text
    proxy.local(True, ANY, G3, Interface(2))  # a receiver comes while there is no upstream: remembered
    assert G3 in proxy.members and kernel.ops[-1] == ("join", G2, S1)
    verdicts = proxy.mgm_creation_alert(group=G1, in_interface=Interface(2), oil=[Interface(3), Interface(5)])
    assert verdicts == {Interface(3): True, Interface(5): True}  # no upstream now: if 5 is just an interface


def test_upstream_back_under_a_new_index_is_taken_and_every_group_joined_again(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()
    mgm = FakeContext()
    asyncio.run(proxy.on_link(mgm, Action.GONE, UP))
    proxy.local(True, ANY, G3, Interface(3))
    back = Link(12, "ppp0", True)
    with caplog.at_level(logging.INFO):
        asyncio.run(proxy.on_link(mgm, Action.BACK, back))
    kernel, reporter = fakes["kernels"][1], fakes["reporters"][1]
    assert (kernel.ifname, kernel.if_index) == ("ppp0", 12)
    assert proxy.upstream == Interface(12)
    assert set(kernel.where) == {(G1, None), (G2, S1), (G3, None)}
    assert {g for g, _old, _new in reporter.changes} == {G1, G2, G3}  # reported at once too
    assert mgm.calls[1:] == [("take", Interface(12)), ("add", ANY, ANY, Interface(12))]  # forward_upstream
    assert "upstream ppp0 is back (if_index 12): 3 group(s) joined upstream again" in caplog.text


def test_upstream_back_while_its_link_is_down_leaves_the_report_to_the_kernel(fakes: dict[str, list[Any]]) -> None:
    proxy = running_proxy(forward_upstream=False)
    mgm = FakeContext()
    asyncio.run(proxy.on_link(mgm, Action.GONE, UP))
    asyncio.run(proxy.on_link(mgm, Action.BACK, Link(12, "ppp0", False)))
    assert set(fakes["kernels"][1].where) == {(G1, None), (G2, S1)}  # the kernel takes joins on a down link
    assert fakes["reporters"][1].changes == []  # it reports them at link up; a send now would fail
    assert ("add", ANY, ANY, Interface(12)) not in mgm.calls


def test_upstream_back_but_refused_by_the_manager_joins_nothing(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()
    asyncio.run(proxy.on_link(FakeContext(), Action.GONE, UP))
    with caplog.at_level(logging.ERROR):
        asyncio.run(proxy.on_link(FakeContext(refuse_take=True), Action.BACK, Link(12, "ppp0", True)))
    assert len(fakes["kernels"]) == 1 and proxy.upstream is None and proxy.kernel is None
    assert "the manager refused the upstream" in caplog.text


def test_link_down_up_and_rename_only_log_and_keep_the_memberships(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()
    kernel = fakes["kernels"][0]
    mgm = FakeContext()
    with caplog.at_level(logging.INFO):
        asyncio.run(proxy.on_link(mgm, Action.DOWN, Link(5, "ppp0", False)))
        asyncio.run(proxy.on_link(mgm, Action.UP, UP))
        asyncio.run(proxy.on_link(mgm, Action.RENAMED, Link(5, "wan", True)))
    assert mgm.calls == [] and not kernel.closed and len(kernel) == 2
    assert kernel.ifname == "wan" and fakes["reporters"][0].ifname == "wan"
    assert "upstream ppp0 (if_index 5) is down" in caplog.text
    assert "upstream ppp0 (if_index 5) is up" in caplog.text
    assert "was renamed wan" in caplog.text


def test_an_upstream_configured_by_index_says_it_will_not_come_back_under_another(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()
    proxy.settings = settings.Settings(5, ("d1", "d2"), {}, False, True)
    with caplog.at_level(logging.WARNING):
        asyncio.run(proxy.on_link(FakeContext(), Action.GONE, UP))
    assert "configured by if_index, so only an interface with if_index 5 can take its place" in caplog.text


MISSING = "mgmnosuch0"


def table(text: str) -> Any:
    return loads(text, "r.toml").plugin("proxy").table


def test_an_upstream_the_host_would_take_must_exist_and_the_error_says_how_to_wait_for_it() -> None:
    proxy = proxy_plugin.ProxyPlugin()
    with pytest.raises(ConfigError) as info:
        proxy.mgm_protocol(table(f'[plugins.proxy]\ninterfaces = ["{MISSING}", "lo"]\nupstream = "{MISSING}"\n'
                                 'downstream = ["lo"]\n'))  # fmt: skip
    assert info.value.line == 3 and info.value.source == "r.toml"
    assert "leave the upstream out of `interfaces`" in str(info.value)


def test_interfaces_gone_before_the_start_are_all_named() -> None:
    names = [f"{MISSING}{i}" for i in range(3)]
    with pytest.raises(ConfigError) as info:
        proxy_plugin.ProxyPlugin().start(table(f'[plugins.proxy]\ninterfaces = {names}\nupstream = "{names[0]}"\n'
                                               f"downstream = {names[1:]}\n"), FakeContext())  # fmt: skip
    assert [line.split(": ", 2)[1] for line in info.value.lines()] == [
        "plugins.proxy.downstream[0]", "plugins.proxy.downstream[1]", "plugins.proxy.upstream"]


def test_an_upstream_left_out_of_interfaces_may_not_exist_yet(caplog: pytest.LogCaptureFixture) -> None:
    proxy = proxy_plugin.ProxyPlugin()
    conf = table(f'[plugins.proxy]\ninterfaces = ["lo"]\nupstream = "{MISSING}"\ndownstream = ["lo"]\n')
    assert proxy.mgm_protocol(conf) == (proxy_plugin.PROXY_PROTOCOL_ID, proxy_plugin.PROXY_COMPONENT_ID)
    assert proxy.settings is not None and not proxy.settings.upstream_listed
    with caplog.at_level(logging.INFO):
        proxy.start(conf, FakeContext())
    assert proxy.upstream is None and proxy.kernel is None
    assert f"proxy: upstream {MISSING} does not exist yet" in caplog.text
    proxy.local(True, ANY, G1, Interface(1))  # remembered for when it appears
    assert proxy.members == {G1: {Interface(1): {ANY}}}


def test_a_link_event_after_mgm_stop_opens_nothing(fakes: dict[str, list[Any]]) -> None:
    proxy = running_proxy()
    mgm = FakeContext()
    asyncio.run(proxy.on_link(mgm, Action.GONE, UP))
    proxy.stop()  # the host cancels the watcher after mgm_stop; an event may still be handled in between
    asyncio.run(proxy.on_link(mgm, Action.BACK, Link(12, "ppp0", True)))
    assert len(fakes["kernels"]) == 1 and proxy.kernel is None and mgm.calls == [("release", Interface(5))]


@pytest.mark.parametrize("refused", [False, True])
def test_an_upstream_left_out_of_interfaces_but_present_is_taken_before_its_forward_membership(
    fakes: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refused: bool
) -> None:
    monkeypatch.setattr(proxy_plugin, "_find_upstream", lambda name: Link(9, "ppp0", True))
    proxy = proxy_plugin.ProxyPlugin()
    conf = table('[plugins.proxy]\ninterfaces = ["lo"]\nupstream = "ppp0"\ndownstream = ["lo"]\n'
                 "forward_upstream = true\n")  # fmt: skip
    proxy.mgm_protocol(conf)
    mgm = FakeContext(refuse_take=refused)
    proxy.start(conf, mgm)
    assert mgm.calls == [("take", Interface(9)), ("add", ANY, ANY, Interface(9))]  # in this order on the wire
    (check,) = mgm.spawned
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(check) is not refused
    if refused:  # nothing joined upstream on an interface the manager did not give us
        assert proxy.upstream is None and fakes["kernels"][0].closed
        assert "the manager refused the upstream" in caplog.text
    else:
        assert proxy.upstream == Interface(9) and proxy.kernel is fakes["kernels"][0]


def test_a_join_on_an_upstream_deleted_before_its_event_arrived_is_logged_not_raised(
    fakes: dict[str, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()

    def gone(group: str, source: str | None) -> None:
        raise OSError(19, "No such device")  # SO_BINDTODEVICE on a new socket of the pool

    proxy.kernel.join = gone
    with caplog.at_level(logging.ERROR):
        proxy.local(True, ANY, G3, Interface(2))
    assert proxy.errors == 1 and G3 in proxy.members and G3 not in proxy.joined  # joined again when it is back
    assert f"upstream (*,{G3}) refused: [Errno 19] No such device" in caplog.text


def test_the_link_watcher_outlives_a_failing_event(
    fakes: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = running_proxy()

    async def broken(mgm: Any, action: Action, link: Link) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(proxy, "on_link", broken)
    with caplog.at_level(logging.ERROR):
        asyncio.run(proxy._on_link_logged(FakeContext(), Action.BACK, Link(12, "ppp0", True)))
    assert proxy.errors == 1 and "handling back of ppp0 (if_index 12) failed" in caplog.text

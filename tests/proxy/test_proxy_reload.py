"""The SIGHUP reload without sockets: the diff of two settings, and what `mgm_reload` applies from a new file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxy_fakes import FakeContext, FakeKernel, FakeReporter

from mgm.core.runtime.config import ConfigError, load
from mgm.core.types import Interface
from mgm.plugins.proxy import plugin as proxy_plugin
from mgm.plugins.proxy.links import Link
from mgm.plugins.proxy.merge import ALL, ASM, GroupFilter, boundary_ranges
from mgm.plugins.proxy.reload import plan_reload
from mgm.plugins.proxy.settings import Settings

ANY = "0.0.0.0"
GA, GB = "239.1.1.1", "239.2.2.2"
DENY_A = GroupFilter.of(deny=["239.1.0.0/16"])
DENY_B = GroupFilter.of(deny=["239.2.0.0/16"])


def test_the_diff_names_only_what_changed() -> None:
    old = Settings("up", ("d1", "d2"), {"d2": DENY_A}, False, True)
    assert plan_reload(old, old).changes_nothing
    plan = plan_reload(old, Settings("up", ("d2", "d1"), {"d1": DENY_B}, True, False))  # order is no change
    assert not plan.refused
    assert plan.filters == {"d1": DENY_B, "d2": ALL}  # d2's filter lifted: every group
    assert (plan.forward_upstream, plan.immediate_report) == (True, False)
    assert plan.summary() == (
        "filter of 'd2' now every group; filter of 'd1' now deny 239.2.0.0/16; "
        "forward_upstream on; immediate_report off"
    )


@pytest.mark.parametrize(
    ("new", "keys", "words"),
    [
        (Settings("up2", ("d1", "d2")), ["plugins.proxy.upstream"], "from 'up' to 'up2'"),
        (Settings("up", ("d1", "d3")), ["plugins.proxy.downstream"], "'d3' added, 'd2' removed"),
        (Settings(7, ("d1",), {"d1": DENY_B}), ["plugins.proxy.upstream", "plugins.proxy.downstream"], "if_index 7"),
    ],
)
def test_a_change_of_interfaces_refuses_the_whole_reload(new: Settings, keys: list[str], words: str) -> None:
    plan = plan_reload(Settings("up", ("d1", "d2")), new)
    assert [r.key for r in plan.refused] == keys
    assert all("restart the proxy to change its interfaces" in r.message for r in plan.refused)
    assert words in " ".join(r.message for r in plan.refused)
    assert plan.changes_nothing  # nothing else of the file applies


# --- mgm_reload: the file the host read again ----------------------------------------------------------------------

CONFIG = """\
[plugins.proxy]
interfaces = ["lo"]
upstream = "mgmnosuch0"
downstream = [{{ interface = "lo", deny = [{deny}] }}]
forward_upstream = {forward}
immediate_report = {immediate}
"""


def reload(proxy: Any, mgm: FakeContext) -> None:
    """What the host does on SIGHUP: load the file once, call the hook (a refusal raises ConfigError)."""
    proxy.mgm_reload(mgm=mgm, whole_config=load(proxy.path))


def write(path: Path, deny: str = '"239.2.0.0/16"', forward: str = "false", immediate: str = "true") -> None:
    path.write_text(CONFIG.format(deny=deny, forward=forward, immediate=immediate))


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A proxy read from a file: downstream lo (if_index 1) denying GB, a kernel stand-in upstream (if_index 9).

    Receivers want GA and GB on lo, so only GA is joined upstream.
    """
    return make_proxy(tmp_path, monkeypatch, forward="false")


@pytest.fixture
def forwarding_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same, started with forward_upstream on (so it answers creation alerts)."""
    return make_proxy(tmp_path, monkeypatch, forward="true")


def make_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forward: str) -> Any:
    monkeypatch.setattr(proxy_plugin.Reporter, "open", staticmethod(lambda n, i, on_error=None: FakeReporter(n, i)))
    path = tmp_path / "router.toml"
    write(path, forward=forward)
    proxy = proxy_plugin.ProxyPlugin()
    table = load(path).plugin("proxy").table
    proxy.mgm_protocol(table)
    proxy.start(table, FakeContext())  # the upstream does not exist: stand-ins take its place
    proxy.upstream, proxy.up_link, proxy.kernel = Interface(9), Link(9, "mgmnosuch0", True), FakeKernel("up0", 9)
    proxy.reporter = FakeReporter("up0", 9)
    proxy.local(True, ANY, GA, Interface(1))
    proxy.local(True, ANY, GB, Interface(1))
    assert set(proxy.kernel.where) == {(GA, None)}
    proxy.path = path
    return proxy


def test_a_new_filter_sets_the_boundaries_and_moves_the_upstream_memberships(proxy: Any) -> None:
    write(proxy.path, deny='"239.1.0.0/16"')
    mgm = FakeContext()
    reload(proxy, mgm)
    assert mgm.calls == [("boundaries", Interface(1), tuple(boundary_ranges(DENY_A)))]
    assert set(proxy.kernel.where) == {(GB, None)}
    assert proxy.kernel.ops[1:] == [("leave", GA, None), ("join", GB, None)]
    assert [(g, new) for g, _old, new in proxy.reporter.changes[1:]] == [(GA, None), (GB, ASM)]  # reported at once
    assert proxy.filters[Interface(1)] == DENY_A and proxy.settings.filters["lo"] == DENY_A

    write(proxy.path, deny="")  # no filter left: the boundaries are lifted, both joined
    reload(proxy, mgm)
    assert mgm.calls[-1] == ("boundaries", Interface(1), ())
    assert set(proxy.kernel.where) == {(GA, None), (GB, None)}


def test_a_source_list_and_star_g_on_one_group_change_joins_before_drops(proxy: Any) -> None:
    proxy.local(True, "10.0.0.1", "239.2.9.9", Interface(1))  # denied now
    proxy.local(True, ANY, "239.2.9.9", Interface(1))
    write(proxy.path, deny="")
    reload(proxy, FakeContext())
    assert ("join", "239.2.9.9", None) in proxy.kernel.ops and ("join", "239.2.9.9", "10.0.0.1") not in proxy.kernel.ops


def test_forward_upstream_and_immediate_report_follow_the_file(forwarding_proxy: Any) -> None:
    proxy = forwarding_proxy
    assert proxy.questions == {"creation_alert"}
    mgm = FakeContext()
    reporter = proxy.reporter
    write(proxy.path, forward="false", immediate="false")
    reload(proxy, mgm)
    assert mgm.calls == [("delete", ANY, ANY, Interface(9))]
    assert reporter.closed and proxy.reporter is None
    write(proxy.path, forward="true", immediate="true")  # still asked creation alerts: it may come back
    reload(proxy, mgm)
    assert mgm.calls[1:] == [("add", ANY, ANY, Interface(9))]
    assert isinstance(proxy.reporter, FakeReporter) and not proxy.reporter.closed
    assert proxy.kernel.ops == [("join", GA, None)]  # no filter changed: no membership moved


def test_forward_upstream_cannot_be_turned_on_in_a_proxy_started_without_it(proxy: Any) -> None:
    """It registered answering no creation alert, and those are what keep other flows out of the upstream."""
    assert proxy.questions == frozenset()
    write(proxy.path, forward="true", immediate="false")
    mgm = FakeContext()
    with pytest.raises(ConfigError) as info:
        reload(proxy, mgm)
    assert str(info.value).startswith(f"{proxy.path}:5: plugins.proxy.forward_upstream: turning forward_upstream on "
                                      "needs a restart")  # fmt: skip
    assert mgm.calls == [] and not proxy.settings.forward_upstream and proxy.reporter is not None


def test_a_broken_table_is_refused_with_its_line_and_the_settings_in_force_stay(proxy: Any) -> None:
    before = proxy.settings
    write(proxy.path, deny='"10.0.0.0/8"')
    mgm = FakeContext()
    with pytest.raises(ConfigError) as info:
        reload(proxy, mgm)
    assert f"{proxy.path}:4: plugins.proxy.downstream[0]: '10.0.0.0/8' is not inside 224.0.0.0/4" in str(info.value)
    assert proxy.settings is before and mgm.calls == [] and set(proxy.kernel.where) == {(GA, None)}


def test_an_interface_change_is_refused_naming_the_key_and_line(proxy: Any) -> None:
    proxy.path.write_text(proxy.path.read_text().replace('upstream = "mgmnosuch0"', 'upstream = "mgmnosuch1"')
                          .replace('deny = ["239.2.0.0/16"]', "deny = []"))  # fmt: skip
    mgm = FakeContext()
    with pytest.raises(ConfigError) as info:
        reload(proxy, mgm)
    assert str(info.value).startswith(
        f"{proxy.path}:3: plugins.proxy.upstream: the upstream changed from 'mgmnosuch0' to 'mgmnosuch1'"
    )
    assert "restart the proxy to change its interfaces" in str(info.value)
    assert mgm.calls == [] and set(proxy.kernel.where) == {(GA, None)}  # the filter change did not apply either


def test_a_reload_while_the_upstream_is_gone_applies_when_it_comes_back(forwarding_proxy: Any) -> None:
    proxy = forwarding_proxy
    mgm = FakeContext()
    write(proxy.path, forward="false")
    reload(proxy, mgm)
    proxy.upstream_gone(mgm)
    write(proxy.path, forward="true")
    reload(proxy, mgm)
    assert mgm.calls == [("delete", ANY, ANY, Interface(9)), ("release", Interface(9))]  # nothing to add it on
    assert proxy.settings.forward_upstream  # upstream_back adds it (test_proxy_links)

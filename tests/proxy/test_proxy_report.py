"""The proxy's immediate upstream reports without the network: records, packets, batching, version, settings."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from mgm.core.runtime.config import ConfigError, loads
from mgm.plugins.igmp import packet
from mgm.plugins.igmp.packet import ALLOW_NEW_SOURCES, CHANGE_TO_EXCLUDE_MODE, GroupRecord, V3Report
from mgm.plugins.proxy import report, settings
from mgm.plugins.proxy.merge import ASM
from mgm.plugins.proxy.report import Change, Reporter, igmp_version, pack_v3, packets, v3_records

G, G2 = "239.1.2.3", "239.1.2.4"
S1, S2, S3 = "10.0.0.1", "10.0.0.2", "10.0.0.10"
MTU = 1500


def v3_messages(out: list[tuple[str, bytes]]) -> list[V3Report]:
    """The v3 reports of `packets`' output, each parsed back (and sent to 224.0.0.22)."""
    parsed = []
    for destination, message in out:
        assert destination == packet.ALL_IGMPV3_ROUTERS
        got = packet.parse(message)
        assert isinstance(got, V3Report), got
        parsed.append(got)
    return parsed


# --- v3 records of each transition -----------------------------------------------------------------


def test_a_new_star_g_membership_is_change_to_exclude_with_no_sources() -> None:
    out = packets({G: Change(None, ASM)}, 3, MTU)
    assert v3_messages(out) == [V3Report((GroupRecord(CHANGE_TO_EXCLUDE_MODE, G),))]


def test_sources_becoming_star_g_is_change_to_exclude_with_no_sources() -> None:
    assert v3_records(G, frozenset({S1, S2}), ASM) == [GroupRecord(CHANGE_TO_EXCLUDE_MODE, G)]


def test_new_sources_of_an_include_mode_group_are_allow_new_sources() -> None:
    assert v3_records(G, None, frozenset({S1})) == [GroupRecord(ALLOW_NEW_SOURCES, G, (S1,))]
    # only the new ones, in address order (10.0.0.2 before 10.0.0.10)
    out = packets({G: Change(frozenset({S1}), frozenset({S1, S3, S2}))}, 3, MTU)
    assert v3_messages(out) == [V3Report((GroupRecord(ALLOW_NEW_SOURCES, G, (S2, S3)),))]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ASM, None),  # a leave
        (frozenset({S1}), None),
        (frozenset({S1, S2}), frozenset({S1})),  # fewer sources
        (ASM, frozenset({S1})),  # (*,G) -> sources: the upstream already sends S1
        (ASM, ASM),
        (frozenset({S1}), frozenset({S1})),
    ],
)
def test_changes_that_add_nothing_are_not_reported(old: Any, new: Any) -> None:
    assert v3_records(G, old, new) == []
    assert packets({G: Change(old, new)}, 3, MTU) == []
    assert packets({G: Change(old, new)}, 2, MTU) == []


def test_link_local_groups_are_never_reported() -> None:
    changes = {"224.0.0.251": Change(None, ASM), "224.0.0.22": Change(None, frozenset({S1}))}
    assert packets(changes, 3, MTU) == [] and packets(changes, 2, MTU) == []


def test_changes_of_one_turn_go_in_one_v3_report() -> None:
    changes = {G: Change(None, ASM), G2: Change(frozenset({S1}), frozenset({S1, S2})), "239.9.9.9": Change(ASM, None)}
    out = packets(changes, 3, MTU)
    assert len(out) == 1
    assert v3_messages(out) == [
        V3Report((GroupRecord(CHANGE_TO_EXCLUDE_MODE, G), GroupRecord(ALLOW_NEW_SOURCES, G2, (S2,))))
    ]


def test_a_batch_larger_than_the_mtu_is_split_into_full_reports() -> None:
    groups = [f"239.5.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    out = packets({g: Change(None, ASM) for g in groups}, 3, MTU)
    per_report = (MTU - 24 - 8) // 8  # IP header with Router Alert, v3 report header, 8 octets per record
    assert len(out) == math.ceil(1000 / per_report) == 6
    reports = v3_messages(out)
    assert all(len(r.records) == per_report for r in reports[:-1])
    assert [rec.group for r in reports for rec in r.records] == groups  # each once, in order
    assert all(rec.type == CHANGE_TO_EXCLUDE_MODE for r in reports for rec in r.records)
    assert max(24 + len(m) for _, m in out) <= MTU


def test_a_source_list_longer_than_the_mtu_allows_is_split_into_records_of_the_same_type() -> None:
    sources = frozenset(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(500))
    out = packets({G: Change(None, sources)}, 3, MTU)
    reports = v3_messages(out)
    records = [rec for r in reports for rec in r.records]
    assert len(out) == 2 and all(24 + len(m) <= MTU for _, m in out)
    assert {rec.type for rec in records} == {ALLOW_NEW_SOURCES} and {rec.group for rec in records} == {G}
    assert sorted(s for rec in records for s in rec.sources) == sorted(sources)
    assert len(records[0].sources) == (MTU - 24 - 8 - 8) // 4  # the first record as full as the packet allows


def test_a_small_mtu_still_fits_a_record_and_a_too_small_one_is_refused() -> None:
    out = pack_v3([GroupRecord(CHANGE_TO_EXCLUDE_MODE, f"239.7.0.{i}") for i in range(1, 11)], 68)
    assert len(out) == 3 and all(24 + len(m) <= 68 for m in out)  # 4 records per report
    with pytest.raises(ValueError, match="minimum"):
        pack_v3([GroupRecord(CHANGE_TO_EXCLUDE_MODE, G)], 60)


# --- v2 and v1 ----------------------------------------------------------------------------------------


def test_v2_mode_sends_one_v2_report_to_each_newly_joined_group() -> None:
    changes = {
        G: Change(None, ASM),
        G2: Change(None, frozenset({S1, S2})),  # a source join: v2 has no sources, the report is for G2
        "239.8.8.8": Change(frozenset({S1}), frozenset({S1, S2})),  # already joined: the kernel reports nothing
        "239.8.8.9": Change(frozenset({S1}), ASM),
        "239.8.8.10": Change(ASM, None),
    }
    out = packets(changes, 2, MTU)
    assert [destination for destination, _ in out] == [G, G2]
    assert [packet.parse(m) for _, m in out] == [packet.Report(2, G), packet.Report(2, G2)]
    assert all(m[0] == packet.V2_REPORT for _, m in out)


def test_v1_mode_sends_v1_reports() -> None:
    out = packets({G: Change(None, ASM)}, 1, MTU)
    assert out == [(G, packet.build_report(1, G))] and out[0][1][0] == packet.V1_REPORT


# --- the kernel's version, from /proc/net/igmp --------------------------------------------------------

PROC = (
    "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n"
    "1\tlo        :     1      V3\n"
    "\t\t\t\t010000E0     1 0:00000000\t\t0\n"
    "2\tr1        :     2      V2\n"
    "\t\t\t\t010101EF     1 1:00000000\t\t0\n"
    "\t\t\t\t010000E0     1 0:00000000\t\t0\n"
    "3\twan0.100   :     1      V1\n"
    "\t\t\t\t010000E0     1 0:00000000\t\t0\n"
    "17\tlonginterface1:     1      V3\n"
)


def test_igmp_version_reads_the_device_line_by_index() -> None:
    # 17: a name longer than the column; 4: not listed (gone, or no IPv4 on it)
    assert [igmp_version(PROC, index) for index in (1, 2, 3, 17, 4)] == [3, 2, 1, 3, None]
    assert igmp_version(PROC.splitlines()[0], 1) is None
    with pytest.raises(ValueError, match="V4"):
        igmp_version(PROC.replace("V1", "V4"), 3)


def test_igmp_version_of_this_kernel_lists_loopback() -> None:
    """The format the reader expects is the one this kernel writes (lo is always there, in some version)."""
    text = Path("/proc/net/igmp").read_text()
    assert igmp_version(text, 1) in (1, 2, 3), text


# --- the Reporter: batching over one loop turn, failures logged and counted -----------------------------


class FakeSocket:
    def __init__(self, fail: int | None = None) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.fail = fail
        self.closed = False

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.fail is not None:
            raise OSError(self.fail, "refused")
        self.sent.append((data, address))
        return len(data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def kernel_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the Reporter at a /proc/net/igmp of our own (interface 2 in the given version), MTU 1500, an address."""

    def write(version: int) -> None:
        proc = tmp_path / "igmp"
        proc.write_text(PROC.replace("V2", f"V{version}"))
        monkeypatch.setattr(report, "PROC_IGMP", str(proc))

    monkeypatch.setattr(Reporter, "_mtu", lambda self: MTU)
    monkeypatch.setattr(report, "has_ipv4", lambda ifname: True)
    return write


def reporter(sock: FakeSocket, errors: list[int]) -> Reporter:
    return Reporter("r1", 2, sock, on_error=lambda: errors.append(1))  # type: ignore[arg-type]


def test_changes_in_one_loop_turn_are_flushed_together_at_its_end(kernel_in: Any) -> None:
    kernel_in(3)
    sock, errors = FakeSocket(), []

    async def burst() -> tuple[int, int]:
        rep = reporter(sock, errors)
        for i in range(1, 101):
            rep.change(f"239.3.0.{i}", None, ASM)
        rep.change(G, None, frozenset({S1}))
        rep.change(G, frozenset({S1}), frozenset({S1, S2}))  # one group twice: first old, last new
        rep.change(G2, None, ASM)
        rep.change(G2, ASM, None)  # joined and left within the turn: nothing
        before = len(sock.sent)
        await asyncio.sleep(0)
        return before, rep.sent

    before, sent = asyncio.run(burst())
    assert before == 0 and sent == 1 and not errors
    (data, address), = sock.sent  # fmt: skip
    assert address == ("224.0.0.22", 0)
    records = packet.parse(data).records  # type: ignore[union-attr]
    assert len(records) == 101
    assert records[-1] == GroupRecord(ALLOW_NEW_SOURCES, G, (S1, S2))


def test_without_a_running_loop_a_change_is_sent_at_once(kernel_in: Any) -> None:
    kernel_in(2)
    sock, errors = FakeSocket(), []
    rep = reporter(sock, errors)
    rep.change(G, None, ASM)
    rep.change(G, ASM, None)  # a leave: the kernel's
    assert [(packet.parse(d), a) for d, a in sock.sent] == [(packet.Report(2, G), (G, 0))]
    rep.close()
    assert sock.closed
    rep.change(G2, None, ASM)  # closed: nothing more
    assert len(sock.sent) == 1


@pytest.mark.parametrize("code", [errno.ENETDOWN, errno.EPERM])
def test_a_send_failure_is_logged_and_counted_never_raised(
    kernel_in: Any, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    kernel_in(3)
    errors: list[int] = []
    rep = reporter(FakeSocket(fail=code), errors)
    with caplog.at_level(logging.WARNING, logger="mgm.plugins.proxy.report"):
        rep.change(G, None, ASM)
    assert errors == [1] and rep.sent == 0
    assert errno.errorcode[code] in caplog.text and "r1" in caplog.text


def test_an_interface_missing_from_proc_is_a_counted_failure(kernel_in: Any, caplog: pytest.LogCaptureFixture) -> None:
    kernel_in(3)
    sock, errors = FakeSocket(), []
    rep = Reporter("gone0", 9, sock, on_error=lambda: errors.append(1))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="mgm.plugins.proxy.report"):
        rep.change(G, None, ASM)
    assert errors == [1] and sock.sent == []
    assert "gone0 (if_index 9) is not in" in caplog.text


def test_multicast_mac() -> None:
    assert report.multicast_mac("224.0.0.22") == bytes.fromhex("01005e000016")
    assert report.multicast_mac("239.129.2.3") == bytes.fromhex("01005e010203")  # the 24th bit is dropped


# --- the plugin reports what the kernel holds ------------------------------------------------------------


def test_the_plugin_reports_the_held_change_and_never_a_refused_join() -> None:
    from proxy_fakes import FakeKernel, FakeReporter
    from test_proxy_merge import proxy_with

    from mgm.core.types import Interface

    proxy = proxy_with(FakeKernel(refuse=frozenset({"239.9.9.9"})))
    rec = FakeReporter()
    proxy.reporter = rec
    d1 = Interface(2)
    proxy.local(True, S1, G, d1)
    proxy.local(True, "0.0.0.0", G, d1)
    proxy.local(True, "0.0.0.0", "239.9.9.9", d1)  # refused by the kernel
    proxy.local(True, "0.0.0.0", "224.0.0.251", d1)  # link-local: never joined
    proxy.local(False, "0.0.0.0", G, d1)
    assert rec.changes == [(G, None, frozenset({S1})), (G, frozenset({S1}), ASM), (G, ASM, frozenset({S1}))]
    assert all(packets({g: Change(o, n)}, 3, MTU) == [] for g, o, n in rec.changes[2:])  # the leave part: nothing
    proxy.stop()
    assert rec.closed and proxy.reporter is None


# --- settings -----------------------------------------------------------------------------------------------

TABLE = """\
[plugins.proxy]
interfaces = ["eth0", "eth1"]
upstream = "eth0"
downstream = ["eth1"]
"""


def test_immediate_report_is_on_unless_set_to_false() -> None:
    assert settings.parse(loads(TABLE, "router.toml"), "proxy").immediate_report is True
    off = settings.parse(loads(TABLE + "immediate_report = false\n", "router.toml"), "proxy")
    assert off.immediate_report is False


@pytest.mark.parametrize("value", ['"no"', "0", "[]"])
def test_immediate_report_must_be_a_boolean(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(TABLE + f"immediate_report = {value}\n", "router.toml"), "proxy")
    assert info.value.source == "router.toml" and info.value.line == 5
    assert "plugins.proxy.immediate_report" in str(info.value) and "true or false" in str(info.value)

"""Group enumeration: start, pages ordered by group then source, end (MGM-SPEC: Membership, last rule)."""

from __future__ import annotations

from typing import Any

import pytest
from rules_harness import ANY, DVMRP, IGMP, PIM, Core, Proto, sgf

from mgm.bus.status import Status


@pytest.fixture
def joined(core: Core) -> Proto:
    """Memberships over several clients and interfaces, added out of order."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    pim.take(2)
    igmp.take(1)
    pim.join("10.0.0.9", "239.1.1.1", 1)
    pim.join("10.0.0.9", "239.1.1.1", 2)  # same (S,G), second interface
    igmp.join("10.0.0.9", "239.1.1.1", 1)  # same (S,G), second client
    pim.join(ANY, "239.1.1.1", 1)
    pim.join("10.0.0.10", "239.1.1.1", 1)
    igmp.join(ANY, "224.0.1.1", 1)
    pim.join(ANY, ANY, 2)
    pim.join("9.9.9.9", "232.1.1.1", 2)
    return pim


ALL = [sgf(ANY, ANY), sgf(ANY, "224.0.1.1"), sgf("9.9.9.9", "232.1.1.1"), sgf(ANY, "239.1.1.1"),
       sgf("10.0.0.9", "239.1.1.1"), sgf("10.0.0.10", "239.1.1.1")]  # fmt: skip


def walk(p: Proto, kind: str, page_size: int) -> tuple[list[dict[str, Any]], list[bool]]:
    enum = p("group_enumeration_start", type=kind)["enum"]
    entries: list[dict[str, Any]] = []
    mores: list[bool] = []
    while True:
        page = p("group_enumeration_next", enum=enum, max_entries=page_size)
        assert 1 <= len(page["entries"]) <= page_size
        entries += page["entries"]
        mores.append(page["more"])
        if not page["more"]:
            break
    p("group_enumeration_end", enum=enum)
    return entries, mores


@pytest.mark.parametrize("page_size", [1, 2, 4, 6, 100])
def test_all_sources_lists_each_pair_once_by_group_then_source(core: Core, joined: Proto, page_size: int) -> None:
    """all_sources: every distinct (source, group) joined anywhere, once, ordered by group then source."""
    entries, mores = walk(joined, "all_sources", page_size)
    assert entries == ALL
    assert mores[-1] is False and all(mores[:-1])


def test_any_source_lists_each_group_once(core: Core, joined: Proto) -> None:
    """[ours] any_source: one (*,G) entry per group with any membership, (*,*) included, ordered by group."""
    entries, _ = walk(joined, "any_source", 2)
    assert entries == [sgf(ANY, ANY), sgf(ANY, "224.0.1.1"), sgf(ANY, "232.1.1.1"), sgf(ANY, "239.1.1.1")]


def test_next_after_the_last_page_is_no_more_items(core: Core, joined: Proto) -> None:
    """Where nothing is left, group_enumeration_next is ERROR_NO_MORE_ITEMS."""
    enum = joined("group_enumeration_start", type="all_sources")["enum"]
    assert joined("group_enumeration_next", enum=enum, max_entries=6)["more"] is False
    core.refused(Status.ERROR_NO_MORE_ITEMS, joined, "group_enumeration_next", enum=enum, max_entries=6)


def test_empty_enumeration_is_no_more_items_at_once(core: Core) -> None:
    """With no memberships the first page is already ERROR_NO_MORE_ITEMS."""
    p = core.register(DVMRP)
    enum = p("group_enumeration_start", type="any_source")["enum"]
    core.refused(Status.ERROR_NO_MORE_ITEMS, p, "group_enumeration_next", enum=enum, max_entries=10)


def test_enumeration_continues_after_changes(core: Core, joined: Proto) -> None:
    """[ours] A page continues after the last entry returned, even if memberships changed in between."""
    enum = joined("group_enumeration_start", type="all_sources")["enum"]
    assert joined("group_enumeration_next", enum=enum, max_entries=2)["entries"] == ALL[:2]
    joined.leave("9.9.9.9", "232.1.1.1", 2)
    joined.join("10.0.0.11", "239.1.1.1", 2)
    rest = joined("group_enumeration_next", enum=enum, max_entries=10)
    assert rest == {"entries": [*ALL[3:], sgf("10.0.0.11", "239.1.1.1")], "more": False}


@pytest.mark.parametrize("kind", ["ALL_SOURCES", "", "some", 1, None])
def test_bad_enumeration_type_is_invalid(core: Core, kind: Any) -> None:
    """type must be all_sources or any_source."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.register(PIM), "group_enumeration_start", type=kind)


def test_unknown_or_ended_enumeration_is_invalid(core: Core, joined: Proto) -> None:
    """[ours] next/end of an enumeration that is not open for this client is ERROR_INVALID_PARAMETER."""
    enum = joined("group_enumeration_start", type="all_sources")["enum"]
    other = core.register(DVMRP)
    core.refused(Status.ERROR_INVALID_PARAMETER, other, "group_enumeration_next", enum=enum, max_entries=1)
    joined("group_enumeration_end", enum=enum)
    core.refused(Status.ERROR_INVALID_PARAMETER, joined, "group_enumeration_next", enum=enum, max_entries=1)
    core.refused(Status.ERROR_INVALID_PARAMETER, joined, "group_enumeration_end", enum=enum)


@pytest.mark.parametrize("max_entries", [0, -3, True, "5", None])
def test_bad_page_size_is_invalid(core: Core, joined: Proto, max_entries: Any) -> None:
    """max_entries must be an int >= 1."""
    enum = joined("group_enumeration_start", type="all_sources")["enum"]
    core.refused(Status.ERROR_INVALID_PARAMETER, joined, "group_enumeration_next", enum=enum, max_entries=max_entries)


def test_enumerations_are_independent(core: Core, joined: Proto) -> None:
    """Two open enumerations page independently."""
    first = joined("group_enumeration_start", type="all_sources")["enum"]
    second = joined("group_enumeration_start", type="all_sources")["enum"]
    assert first != second
    joined("group_enumeration_next", enum=first, max_entries=3)
    assert joined("group_enumeration_next", enum=second, max_entries=1)["entries"] == ALL[:1]
    assert joined("group_enumeration_next", enum=first, max_entries=1)["entries"] == ALL[3:4]

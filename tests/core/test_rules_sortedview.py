"""The sorted keys behind enumeration and list_mfes stay exact under any mix of changes and page reads."""

from __future__ import annotations

import random

import pytest

from mgm.core.sortedview import SortedKeys


def pages(keys: SortedKeys, size: int) -> list[list[int]]:
    """Every page, read the way a listing does: each after the last key of the previous one."""
    found: list[list[int]] = []
    after, more = -1, True
    while more:
        page, more = keys.page_after(after, size)
        found.append(page)
        if page:
            after = page[-1]
    return found


def test_pages_match_a_full_sort_under_random_churn() -> None:
    """Listings come ordered (group, source): a page is always the next keys of sorted(live keys)."""
    rng = random.Random(5)
    live: set[int] = set()
    keys = SortedKeys()
    for step in range(20000):
        key = rng.randrange(300)
        if key in live:
            live.discard(key)
            keys.remove(key)
        else:
            live.add(key)
            keys.add(key)
        if step % rng.choice([1, 7, 50, 400]) == 0:
            after, size = rng.randrange(-1, 300), rng.randrange(1, 40)
            later = sorted(k for k in live if k > after)
            assert keys.page_after(after, size) == (later[:size], len(later) > size)
    assert len(keys) == len(live)
    assert [k for page in pages(keys, 17) for k in page] == sorted(live)


def test_page_boundaries() -> None:
    """`more` is false on the page that ends exactly at the last key; past the end is an empty page."""
    keys = SortedKeys()
    for k in (30, 10, 20):
        keys.add(k)
    assert keys.page_after(-1, 3) == ([10, 20, 30], False)
    assert keys.page_after(-1, 2) == ([10, 20], True)
    assert keys.page_after(20, 2) == ([30], False)
    assert keys.page_after(30, 2) == ([], False)
    assert keys.page_after(15, 1) == ([20], True)
    assert pages(keys, 1) == [[10], [20], [30]]


def test_removing_a_missing_key_is_a_loud_bug() -> None:
    """An index out of step with the core's dicts must not pass silently."""
    keys = SortedKeys()
    keys.add(1)
    with pytest.raises(ValueError):
        keys.remove(2)

"""The sorted views behind enumeration and list_mfes stay exact under any mix of changes and reads."""

from __future__ import annotations

import random

from mgm.core.sortedview import SortedView


def test_sorted_view_matches_a_full_sort_under_random_churn() -> None:
    """Listings come ordered (group, source): the lazily merged view always equals sorted(live keys)."""
    rng = random.Random(5)
    live: dict[int, None] = {}
    view = SortedView()
    for step in range(20000):
        key = rng.randrange(300)
        if key in live:
            del live[key]
            view.removed(key)
        else:
            live[key] = None
            view.added(key)
        if step % rng.choice([1, 7, 50, 400]) == 0:
            assert view.get(live) == sorted(live)
    assert view.get(live) == sorted(live)


def test_sorted_view_falls_back_to_a_full_sort_after_many_notes() -> None:
    """Too many unread changes are dropped for one full sort at the next read."""
    live = {k: None for k in range(10)}
    view = SortedView()
    assert view.get(live) == list(range(10))
    for k in range(10, 70_000):
        live[k] = None
        view.added(k)
    del live[3]
    view.removed(3)
    assert view.get(live) == sorted(live)

"""A sorted view of the keys of a live dict, brought up to date only when it is read.

Listings (group enumeration, list_mfes) page through keys in order, but the
keys change far more often than anyone lists them.  So a change only notes
the key (a set add, O(1)), and a read merges the notes into the last sorted
list: the surviving old keys are one sorted run, the new ones another, and
Python's sort merges two runs in linear time.  Until somebody reads, nothing
is tracked at all, and too many notes fall back to one full sort.
"""

from __future__ import annotations

from collections.abc import Collection

MAX_NOTES = 1 << 16


class SortedView:
    __slots__ = ("_added", "_removed", "_sorted")

    def __init__(self) -> None:
        self._sorted: list[int] | None = None  # None: sort from scratch at the next read
        self._added: set[int] = set()  # keys new since the last read
        self._removed = 0  # how many keys of the last read are gone (or gone and back)

    def added(self, key: int) -> None:
        if self._sorted is not None:
            self._added.add(key)
            if len(self._added) > MAX_NOTES:
                self._sorted = None
                self._added = set()

    def removed(self, key: int) -> None:
        if self._sorted is not None:
            if key in self._added:
                self._added.discard(key)
            else:
                self._removed += 1

    def get(self, live: Collection[int]) -> list[int]:
        """The keys of `live` in order (`live` must be the dict whose changes were noted)."""
        if self._sorted is None:
            self._sorted = sorted(live)
        elif self._added or self._removed:
            added = self._added
            # the old keys still live (one sorted run) + the new ones (another): a linear merge
            merged = [k for k in self._sorted if k in live and k not in added] if self._removed else self._sorted
            merged.extend(sorted(added))
            merged.sort()
            self._sorted = merged
            self._added = set()
            self._removed = 0
        return self._sorted

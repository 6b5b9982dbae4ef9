"""Keys kept in order for paging, at a cost that does not grow with their number.

Listings (group enumeration, list_mfes) page through keys in order while the
keys keep changing.  A plain sorted list costs O(n) per insert or delete, and
sorting again after a change costs O(n) per page read; both made a page read
right after a change hundreds of times dearer at 1M keys than at 1k.
``sortedcontainers.SortedList`` (a list of short sorted lists) adds and removes
in O(log n) and yields the page after a key in O(log n + page); a SortedList of
ints costs about one pointer per key beside the ints themselves, which the
core's dicts share.
"""

from __future__ import annotations

from itertools import islice

from sortedcontainers import SortedList


class SortedKeys:
    """A set of ints in ascending order: add, remove, and read a page after a key."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys = SortedList()

    def add(self, key: int) -> None:
        """Add a key that is not there yet (the caller's dict says so)."""
        self._keys.add(key)

    def remove(self, key: int) -> None:
        """Remove a key that is there (ValueError otherwise: an index out of step is a bug)."""
        self._keys.remove(key)

    def __len__(self) -> int:
        return len(self._keys)

    def between(self, lo: int, hi: int) -> list[int]:
        """The keys from `lo` to `hi`, both included, in order."""
        return list(self._keys.irange(lo, hi))

    def page_after(self, after: int, max_entries: int) -> tuple[list[int], bool]:
        """Up to `max_entries` keys greater than `after`, in order, and whether more keys follow them."""
        found: list[int] = list(islice(self._keys.irange(minimum=after, inclusive=(False, True)), max_entries + 1))
        if len(found) > max_entries:
            return found[:max_entries], True
        return found, False

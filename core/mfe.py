"""The multicast forwarding entry (MFE) as the core keeps it, and its wire form.

An MFE is keyed by one int, ``group << 32 | source``: ordering those ints is
ordering by group, then source, which is the order every listing uses.
Which interfaces sit in the OIL is decided by ``mgm.core.state`` (from
memberships, forward-only adds and creation-alert vetoes); this module only
holds the entry and renders it.
"""

from __future__ import annotations

from typing import Any

from mgm.core.args import format_addr, parse_addr
from mgm.core.types import ClientId, Interface


def sg_key(source: int, group: int) -> int:
    """The one int that orders (S,G) by group, then source."""
    return (group << 32) | source


_ORDER: dict[Interface, tuple[int, int]] = {}
_OIL_ENTRY: dict[Interface, dict[str, Any]] = {}
_CACHE_MAX = 1 << 16  # interfaces are few; the bound only guards against a pathological client


def interface_order(iface: Interface) -> tuple[int, int]:
    """OILs and listings order interfaces by if_index, then next hop as a number."""
    order = _ORDER.get(iface)
    if order is None:
        if len(_ORDER) >= _CACHE_MAX:
            _ORDER.clear()
        order = _ORDER[iface] = (iface.if_index, parse_addr(iface.next_hop, "next_hop"))
    return order


def _oil_entry(iface: Interface) -> dict[str, Any]:
    """The wire form of an OIL entry without statistics.

    Shared between every rendered MFE (a (*,G) change can render thousands):
    whoever receives a rendered MFE must treat it as read-only.
    """
    entry = _OIL_ENTRY.get(iface)
    if entry is None:
        if len(_OIL_ENTRY) >= _CACHE_MAX:
            _OIL_ENTRY.clear()
        entry = _OIL_ENTRY[iface] = {"if_index": iface.if_index, "next_hop": iface.next_hop}
    return entry


class Mfe:
    """One forwarding entry; times are monotonic seconds (rendered as wall clock)."""

    __slots__ = (
        "created", "disabled", "forced", "group_text", "in_bytes", "in_iface", "in_packets", "in_protocol_id", "key",
        "last_activity", "oil", "out", "scheduled", "source_text", "timeout", "upstream", "wrong_if_packets",
    )  # fmt: skip

    def __init__(
        self, key: int, in_iface: Interface, upstream: int, in_protocol_id: int, now: float, timeout: float
    ) -> None:
        self.key = key
        # The wire spelling of source and group, made once: every render needs it, and with 100k
        # entries two address-cache lookups per render cost more (~10% of a listing) than two references.
        self.source_text = format_addr(key & 0xFFFFFFFF)
        self.group_text = format_addr(key >> 32)
        self.in_iface = in_iface
        self.upstream = upstream
        self.in_protocol_id = in_protocol_id
        self.oil: dict[Interface, None] = {}
        # Interfaces an owner vetoed in its creation_alert answer; None while there are none.
        self.disabled: set[Interface] | None = None
        # Interfaces added with MGM_FORWARD_STATE_FLAG, each with the clients whose add it is; None while none.
        self.forced: dict[Interface, set[ClientId]] | None = None
        self.created = now
        self.last_activity = now
        self.timeout = timeout
        self.scheduled = 0.0  # the expiry time of this entry's one live slot in the expiry heap
        self.in_packets = 0
        self.in_bytes = 0
        self.wrong_if_packets = 0
        # Per outgoing interface (out_packets, discards), once the forwarder reported them.
        self.out: dict[Interface, tuple[int, int]] | None = None

    @property
    def expires(self) -> float:
        return self.last_activity + self.timeout

    def render(self, wall_offset: float, stats: int | None = None) -> dict[str, Any]:
        """The PROTOCOL.md mfe map; stats None (none), 0 (packets) or 1 (plus discards)."""
        ordered = sorted(self.oil, key=interface_order) if len(self.oil) > 1 else self.oil
        if stats is None:
            oil = [_oil_entry(iface) for iface in ordered]
        else:
            oil = []
            out = self.out or {}
            for iface in ordered:
                packets, discards = out.get(iface, (0, 0))
                entry: dict[str, Any] = {"if_index": iface.if_index, "next_hop": iface.next_hop, "out_packets": packets}
                if stats >= 1:
                    entry["discards"] = discards
                oil.append(entry)
        mfe: dict[str, Any] = {
            "source": self.source_text,
            "group": self.group_text,
            "in_if_index": self.in_iface.if_index,
            "in_next_hop": self.in_iface.next_hop,
            "upstream_neighbor": format_addr(self.upstream),
            "in_protocol_id": self.in_protocol_id,
            "oil": oil,
            "created": self.created + wall_offset,
            "expires": self.expires + wall_offset,
            "timeout": self.timeout,
        }
        if stats is not None:
            mfe.update(in_packets=self.in_packets, in_bytes=self.in_bytes, wrong_if_packets=self.wrong_if_packets)
        return mfe

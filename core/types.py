"""Value types shared by the core, the manager process and the plugins.

Addresses travel as dotted-quad strings on the wire and in these types; the
core may keep integers internally where that is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

IGMP_PROTOCOL_ID = 10
"""RRAS PROTO_IP_IGMP: the one client that may share an interface."""
FORWARDER_PROTOCOL_ID = 65001
"""The forwarder (mgm.plugins.forwarder): ours, outside the RRAS protocol ids; it owns no interface."""

ANY = "0.0.0.0"
"""Wildcard source or group (with mask 0.0.0.0), and next_hop of broadcast links."""

HOST_MASK = "255.255.255.255"

IFF_UP, IFF_LOOPBACK, IFF_MULTICAST, IFF_LOWER_UP = 0x1, 0x8, 0x1000, 0x10000
"""Interface flags (linux/if.h), as sysfs and netlink give them."""

def is_link_local(group: str) -> bool:
    """`group` (a dotted quad as the wire and the kernel write them: no leading zeros) is in 224.0.0.0/24.

    Such groups never leave their link (RFC 5771): never forwarded, never joined upstream.
    A prefix test, not `ipaddress`: the forwarder asks this for every MFE it mirrors.
    """
    return group.startswith("224.0.0.")

MGM_JOIN_STATE_FLAG = 1
MGM_FORWARD_STATE_FLAG = 2


class Interface(NamedTuple):
    """(if_index, next_hop): next_hop tells apart the neighbours of a point-to-multipoint link."""

    if_index: int
    next_hop: str = ANY


class ClientId(NamedTuple):
    """A registered protocol: (protocol_id, component_id)."""

    protocol_id: int
    component_id: int


@dataclass(slots=True)
class Event:
    """Something the core wants published.

    `to` is the client whose `proto/PID/CID` stream carries it (an MGM
    callback), or None for the `state` stream (a change of state, for
    observers).  `fields` are the wire fields of PROTOCOL version 1 besides
    the envelope keys (v, stream, seq, epoch, type), which the manager adds.
    """

    to: ClientId | None
    type: str
    fields: dict[str, Any] = field(default_factory=dict)


CORE_OPS: Final = frozenset({
    "register_protocol", "deregister_protocol", "heartbeat",
    "take_interface_ownership", "release_interface_ownership", "get_protocol_on_interface", "set_boundaries",
    "add_group_membership", "delete_group_membership",
    "group_enumeration_start", "group_enumeration_next", "group_enumeration_end",
    "get_mfe", "list_mfes", "set_mfe", "set_mfe_oil", "new_packet", "wrong_interface", "mfe_counters",
    "answer", "set_protocol_status", "get_protocol_status",
})  # fmt: skip
"""The MGM's operations on the wire (the bus adds ping and sync): the state machine handles exactly these;
a plugin's context fills its handle into all but five of them."""

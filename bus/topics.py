"""The one place that names the event topics.

A subscriber filters by prefix, so the names are chosen to nest:
`proto/10/` gets every component of protocol 10, `proto/` every protocol.
Each topic is also the name of its stream (its own `seq`).
"""

from __future__ import annotations

STATE = "state"
"""Every change of the manager's state, for observers and the forwarder."""

HB = "hb"
"""The manager's heartbeat: epoch and the last seq of every stream."""

PROTO_PREFIX = "proto/"


def proto(protocol_id: int, component_id: int) -> str:
    """The topic (and stream) of the MGM callbacks for one registered client."""
    return f"{PROTO_PREFIX}{protocol_id}/{component_id}"

"""10,000 (S,G) join states towards one PIM neighbour: what one periodic Join/Prune round costs.

The PIM plugin keeps its upstream join state in `Upstream` (plugins/pim/upstream.py); every
`join_prune_interval` it asks `tick` for what is due and sends each message `build` returns.  This
bench fills an `Upstream` with `--states` (S,G) entries, all with one RPF neighbour, in three shapes
(one source in each of N groups; sqrt(N) sources in sqrt(N) groups; N sources in one group), and times
the round the plugin runs when they all come due: `tick` (choosing, sorting and packing) and `build`
of every message.  Times are CPU seconds of this process (`time.process_time`), median over rounds.

Baseline, measured in the same run: the same Join/Prune bytes written by a bare loop of `struct.pack`
calls over pre-encoded addresses, the least any Python encoder could do.  Reported per shape:

* round CPU (ms) and the ratio round / baseline;
* messages and octets sent, and the ratio messages / the fewest that could carry those octets in
  `MAX_MESSAGE`-octet messages (1.0 = packed as tightly as RFC 7761 4.9.5 allows).

    .venv/bin/python bench/pim_join_states.py [--states 10000] [--rounds 7]

No root, no network: it is the plugin's own code, no sockets.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

from mgm.plugins.pim.packet import build
from mgm.plugins.pim.upstream import MAX_MESSAGE, Upstream

NEIGHBOR = (2, "10.0.0.1")
INTERVAL = 60.0


def shapes(states: int) -> dict[str, tuple[int, int]]:
    side = math.isqrt(states)
    return {"one source a group": (states, 1), "square": (side, states // side), "one group": (1, states)}


def keys(groups: int, sources: int) -> list[tuple[str, str]]:
    return [(f"10.{1 + s // 65536}.{s // 256 % 256}.{s % 256}", f"239.{1 + g // 65536}.{g // 256 % 256}.{g % 256}")
            for g in range(groups) for s in range(sources)]  # fmt: skip


def filled(wanted: list[tuple[str, str]]) -> Upstream:
    up = Upstream(join_prune_interval=INTERVAL)
    for key in wanted:
        up.want(key, key[0], NEIGHBOR, 0.0)
    up.tick(0.0)  # the triggered joins go; what is left is the periodic round
    return up


def plugin_round(up: Upstream, now: float) -> list[bytes]:
    return [build(message) for _, message in up.tick(now)]


def baseline_round(groups: int, sources: int) -> Callable[[], list[bytes]]:
    """The same message sizes, written with struct.pack over addresses encoded beforehand."""
    wanted = keys(groups, sources)
    by_group: dict[bytes, list[bytes]] = {}
    for source, group in wanted:
        by_group.setdefault(socket.inet_aton(group), []).append(socket.inet_aton(source))
    head = struct.Struct("!BBHBB4sxBH")
    group_head, source_s = struct.Struct("!BBBB4sHH"), struct.Struct("!BBBB4s")
    room = (MAX_MESSAGE - 14 - 12) // 8

    def run() -> list[bytes]:
        out: list[bytes] = []
        parts: list[bytes] = []
        for group, srcs in by_group.items():
            for i in range(0, len(srcs), room):
                chunk = srcs[i : i + room]
                parts.append(group_head.pack(1, 0, 0, 32, group, len(chunk), 0)
                             + b"".join([source_s.pack(1, 0, 4, 32, s) for s in chunk]))  # fmt: skip
                if sum(map(len, parts)) > MAX_MESSAGE - 14 - 20:
                    out.append(head.pack(0x23, 0, 0, 1, 0, socket.inet_aton(NEIGHBOR[1]), len(parts), 210)
                               + b"".join(parts))  # fmt: skip
                    parts = []
        if parts:
            out.append(head.pack(0x23, 0, 0, 1, 0, socket.inet_aton(NEIGHBOR[1]), len(parts), 210) + b"".join(parts))
        return out

    return run


def cpu(func: Callable[[], object]) -> float:
    start = time.process_time()
    func()
    return time.process_time() - start


def measure(groups: int, sources: int, rounds: int) -> dict[str, float | int]:
    up = filled(keys(groups, sources))
    baseline = baseline_round(groups, sources)
    ours: list[float] = []
    theirs: list[float] = []
    sent: list[bytes] = []
    for index in range(rounds):  # alternate the order, so neither always runs on a warmer cache
        now = INTERVAL * (index + 1)
        first, second = ("ours", "base") if index % 2 == 0 else ("base", "ours")
        for which in (first, second):
            if which == "ours":
                start = time.process_time()
                sent = plugin_round(up, now)
                ours.append(time.process_time() - start)
            else:
                theirs.append(cpu(baseline))
    octets = sum(len(raw) for raw in sent)
    payload = octets - 14 * len(sent)  # what must be carried whatever the packing
    fewest = math.ceil(payload / (MAX_MESSAGE - 14))
    round_ms, base_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    return {"groups": groups, "sources": sources, "round_ms": round(round_ms, 2), "baseline_ms": round(base_ms, 2),
            "ratio": round(round_ms / base_ms, 2), "messages": len(sent), "octets": octets,
            "packing_ratio": round(len(sent) / fewest, 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--states", type=int, default=10_000, help="(S,G) join states (default 10000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per shape (default 7)")
    parser.add_argument("--json", action="store_true", help="one JSON object per shape")
    args = parser.parse_args()
    if args.states < 1 or args.rounds < 1:
        parser.error("--states and --rounds must be at least 1")
    for name, (groups, sources) in shapes(args.states).items():
        result = measure(groups, sources, args.rounds)
        if args.json:
            print(json.dumps({"shape": name, **result}))
        else:
            print(f"{name:20} {groups:>6} groups x {sources:>6} sources: round {result['round_ms']:8.2f} ms CPU"
                  f" ({result['ratio']:.2f} x baseline {result['baseline_ms']:.2f} ms);"
                  f" {result['messages']} messages, {result['octets']} octets,"
                  f" {result['packing_ratio']:.3f} x the fewest")
    return 0


if __name__ == "__main__":
    sys.exit(main())

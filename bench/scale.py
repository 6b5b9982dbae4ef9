"""Core scale: memory and per-operation cost at 1k and at 1M memberships, in one run.

Builds two mgm.core.state.Mgm instances the way the manager drives one
(handle() per request, take_events()/take_completions() drained after each):

* small: 1,000 memberships over 100 groups, 100 MFEs;
* large: 1,000,000 memberships over 100,000 groups, 100,000 MFEs
  (--quick: 100,000 over 10,000 groups, 10,000 MFEs).

Both have the same shape: IGMP (10/1) beside PIM (20/1) on interfaces 1-4
and DVMRP (30/1) on 5-8; per group 4 IGMP (*,G), 3 PIM (S,G) and 3 DVMRP
(*,G) memberships; one MFE per group, made by new_packet from a forwarder
client and completed at the question deadlines (tick), as an unanswering
plugin would leave them.  Interface 8 carries no memberships, so a (*,G)
join there always changes an OIL.

Then each operation is timed on both, timeit-style: a batch of B distinct
operations, R repetitions, the median per operation, and the ratio
large/small (goal: within 1.5x, i.e. cost independent of size).  RSS is the
process's VmRSS after building the large core (goal: under 1 GiB), and the
growth it caused.

    .venv/bin/python bench/scale.py [--quick] [--batch 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from mgm.core.state import DEFERRED, Mgm
from mgm.core.types import Event, Interface

ANY = "0.0.0.0"
ONES = "255.255.255.255"
IGMP, PIM, DVMRP, FWD = (10, 1), (20, 1), (30, 1), (99, 1)
PIM_IFACES = (1, 2, 3, 4)
DVMRP_IFACES = (5, 6, 7, 8)
FREE_IFACE = 8  # no membership is built here
PER_GROUP = 10
DEADLINE = 0.1


def group_addr(i: int) -> str:
    return f"225.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def source_addr(i: int, net: int = 10) -> str:
    return f"{net}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def vmrss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def towards(source: str) -> Interface:
    """Every source is behind interface 1 (PIM's), so rpf questions go to PIM."""
    return Interface(1)


class Bench:
    """One core, its clients, and the manager's habit of draining after every request."""

    def __init__(self, memberships: int) -> None:
        self.groups = memberships // PER_GROUP
        self.core = Mgm(resolver=towards, question_deadline=DEADLINE)
        self.now = 1000.0
        self.handles: dict[tuple[int, int], int] = {}
        self.conns: dict[tuple[int, int], bytes] = {}
        self.events = 0
        self.completed = 0  # deferred replies completed
        self.questions: list[Event] | None = None  # collected while not None
        self.fresh = 0  # a counter for keys no earlier operation used

    def req(self, who: tuple[int, int], op: str, args: dict[str, Any], token: Any = None) -> Any:
        args["handle"] = self.handles[who]
        result = self.core.handle(self.conns[who], op, args, self.now, token)
        self.drain()
        return result

    def drain(self) -> None:
        events = self.core.take_events()
        self.events += len(events)
        if self.questions is not None:
            self.questions += [e for e in events if e.to is not None and "question" in e.fields]
        self.completed += len(self.core.take_completions())

    def answer_questions(self) -> None:
        """Answer every question asked since the last call, as prompt plugins would: rpf keeps the
        proposed interface, creation_alert enables every interface (and may ask more questions)."""
        assert self.questions is not None
        while self.questions:
            asked, self.questions = self.questions, []
            for e in asked:
                who = (e.to.protocol_id, e.to.component_id)
                args: dict[str, Any] = {"question": e.fields["question"]}
                if e.type == "rpf":
                    args.update(if_index=e.fields["if_index"], next_hop=e.fields["next_hop"], upstream_neighbor=ANY)
                elif e.type == "creation_alert":
                    args["oil"] = [{**o, "enabled": True} for o in e.fields["oil"]]
                else:
                    continue  # prune_alert: no answer keeps the timeout
                self.req(who, "answer", args)

    def tick(self, dt: float) -> None:
        self.now += dt
        self.core.tick(self.now)
        self.drain()

    def membership(self, who: tuple[int, int], op: str, source: str, group: str, if_index: int) -> None:
        self.req(
            who,
            op,
            {
                "source": source,
                "source_mask": ANY if source == ANY else ONES,
                "group": group,
                "group_mask": ONES,
                "if_index": if_index,
                "next_hop": ANY,
                "flags": 1,
            },
        )

    def packet(self, source: str, group: str) -> Any:
        return self.req(FWD, "new_packet", {"source": source, "group": group, "if_index": 1, "next_hop": ANY}, 0)

    def build(self) -> None:
        for who, conn in ((IGMP, b"igmp"), (PIM, b"pim"), (DVMRP, b"dvmrp"), (FWD, b"fwd")):
            self.conns[who] = conn
            result = self.core.handle(
                conn, "register_protocol", {"protocol_id": who[0], "component_id": who[1]}, self.now
            )
            self.handles[who] = result["handle"]
        for who, ifaces in ((PIM, PIM_IFACES), (DVMRP, DVMRP_IFACES), (IGMP, PIM_IFACES + DVMRP_IFACES)):
            for i in ifaces:
                self.req(who, "take_interface_ownership", {"if_index": i, "next_hop": ANY})
        for g in range(self.groups):
            group = group_addr(g)
            for k in range(4):
                self.membership(IGMP, "add_group_membership", ANY, group, (g + k) % 7 + 1)
            for i in PIM_IFACES[:3]:
                self.membership(PIM, "add_group_membership", source_addr(g), group, i)
            for i in DVMRP_IFACES[:3]:
                self.membership(DVMRP, "add_group_membership", ANY, group, i)
            if g % 1000 == 999:
                self.keepalive()
        for g in range(self.groups):
            self.packet(source_addr(g), group_addr(g))
            if g % 1000 == 999:
                self.keepalive()
        self.settle()
        self.core.handle(self.conns[FWD], "list_mfes", {"max_entries": 1}, self.now)  # build the sorted views
        got = len(self.core.snapshot("state")["mfes"]) if self.groups <= 1000 else None
        assert got in (None, self.groups), got

    def keepalive(self) -> None:
        """Heartbeats keep every client alive however long a phase takes (time is ours, but liveness is real)."""
        for who in self.handles:
            self.req(who, "heartbeat", {})

    def settle(self) -> None:
        """Let the rpf, then the creation_alert deadlines pass: every pending MFE is stored."""
        for _ in range(2):
            self.keepalive()
            self.tick(DEADLINE + 0.001)

    def random_groups(self, n: int, rng: random.Random) -> list[int]:
        """n groups drawn with replacement (keys stay distinct where the caller adds a fresh source)."""
        return rng.choices(range(self.groups), k=n)


# --- the operations timed: each returns (setup, timed, undo) for one batch ------------------------------------


Phases = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]  # setup, timed, undo
Op = Callable[[Bench, int, random.Random], Phases]


def op_add(b: Bench, n: int, rng: random.Random) -> Phases:
    """A new (S,G) membership on an existing group (no MFE matches it)."""
    keys = [(source_addr(b.fresh + i, 11), group_addr(g)) for i, g in enumerate(b.random_groups(n, rng))]
    b.fresh += n

    def run() -> None:
        for s, g in keys:
            b.membership(PIM, "add_group_membership", s, g, 4)

    def undo() -> None:
        for s, g in keys:
            b.membership(PIM, "delete_group_membership", s, g, 4)

    return (lambda: None), run, undo


def op_delete(b: Bench, n: int, rng: random.Random) -> Phases:
    _, run, undo = op_add(b, n, rng)
    return run, undo, (lambda: None)


def op_oil_change(b: Bench, n: int, rng: random.Random) -> Phases:
    """A (*,G) join then leave on the free interface of a group with an MFE: two OIL updates (per op: one)."""
    groups = [group_addr(g) for g in b.random_groups(n // 2, rng)]

    def run() -> None:
        for g in groups:
            b.membership(DVMRP, "add_group_membership", ANY, g, FREE_IFACE)
            b.membership(DVMRP, "delete_group_membership", ANY, g, FREE_IFACE)

    return (lambda: None), run, (lambda: None)


def op_new_packet(b: Bench, n: int, rng: random.Random) -> Phases:
    """new_packet of a new (S,G) on a joined group, completed at the deadlines (rpf, then creation_alert)."""
    keys = [(source_addr(b.fresh + i, 12), group_addr(g)) for i, g in enumerate(b.random_groups(n, rng))]
    b.fresh += n

    def run() -> None:
        for s, g in keys:
            assert b.packet(s, g) is DEFERRED
        b.settle()

    return b.keepalive, run, (lambda: None)


def op_new_packet_answered(b: Bench, n: int, rng: random.Random) -> Phases:
    """new_packet of a new (S,G) on a joined group, completed by answers (rpf, then creation_alert)."""
    keys = [(source_addr(b.fresh + i, 15), group_addr(g)) for i, g in enumerate(b.random_groups(n, rng))]
    b.fresh += n

    def setup() -> None:
        b.questions = []
        b.completed = 0

    def run() -> None:
        for s, g in keys:
            assert b.packet(s, g) is DEFERRED
            b.answer_questions()
        assert b.completed == len(keys), (b.completed, len(keys))

    def undo() -> None:
        b.questions = None

    return setup, run, undo


def op_get_mfe(b: Bench, n: int, rng: random.Random) -> Phases:
    keys = [(source_addr(g), group_addr(g)) for g in b.random_groups(n, rng)]
    conn = b.conns[FWD]

    def run() -> None:
        for s, g in keys:
            b.core.handle(conn, "get_mfe", {"source": s, "group": g}, b.now)

    return (lambda: None), run, (lambda: None)


def op_list_mfes(b: Bench, n: int, rng: random.Random) -> Phases:
    """One full page of 50 MFEs after a random (S,G), no change in between."""
    # MFEs list in group order, one per group g in g order: any g below groups - 50 gives a full page
    afters = [{"source": source_addr(g), "group": group_addr(g)} for g in rng.choices(range(b.groups - 50), k=n)]
    conn = b.conns[FWD]

    def run() -> None:
        for after in afters:
            page = b.core.handle(conn, "list_mfes", {"after": after, "max_entries": 50}, b.now)
            assert len(page["entries"]) == 50

    return (lambda: None), run, (lambda: None)


def op_enumeration(b: Bench, n: int, rng: random.Random) -> Phases:
    """One group_enumeration_next page of 100 (all_sources), restarting at the end."""
    state: dict[str, int] = {}

    def start() -> None:
        state["enum"] = b.req(PIM, "group_enumeration_start", {"type": "all_sources"})["enum"]

    def run() -> None:
        for _ in range(n):
            result = b.req(PIM, "group_enumeration_next", {"enum": state["enum"], "max_entries": 100})
            if not result["more"]:
                b.req(PIM, "group_enumeration_end", {"enum": state["enum"]})
                start()

    def end() -> None:
        b.req(PIM, "group_enumeration_end", {"enum": state["enum"]})

    return start, run, end


def op_list_after_change(b: Bench, n: int, rng: random.Random) -> Phases:
    """A list_mfes page (100) right after an MFE was created (the sorted view is rebuilt on demand)."""
    g = b.random_groups(1, rng)[0]
    key = (source_addr(b.fresh, 13), group_addr(g))
    b.fresh += 1
    conn = b.conns[FWD]

    def setup() -> None:
        b.packet(*key)
        b.settle()

    def run() -> None:
        b.core.handle(conn, "list_mfes", {"max_entries": 100}, b.now)

    return setup, run, (lambda: None)


def op_enum_after_change(b: Bench, n: int, rng: random.Random) -> Phases:
    """An enumeration page right after a membership of a new (S,G) was added (the sorted view is rebuilt)."""
    g = b.random_groups(1, rng)[0]
    key = (source_addr(b.fresh, 14), group_addr(g))
    b.fresh += 1
    state: dict[str, int] = {}

    def setup() -> None:
        b.membership(PIM, "add_group_membership", key[0], key[1], 4)
        state["enum"] = b.req(PIM, "group_enumeration_start", {"type": "all_sources"})["enum"]

    def run() -> None:
        b.req(PIM, "group_enumeration_next", {"enum": state["enum"], "max_entries": 100})

    def undo() -> None:
        b.req(PIM, "group_enumeration_end", {"enum": state["enum"]})
        b.membership(PIM, "delete_group_membership", key[0], key[1], 4)

    return setup, run, undo


# name, op, operations per timed batch (None: --batch)
OPS: list[tuple[str, Op, int | None]] = [
    ("add_group_membership", op_add, None),
    ("delete_group_membership", op_delete, None),
    ("OIL change: (*,G) join/leave with an MFE", op_oil_change, None),
    ("get_mfe", op_get_mfe, None),
    ("list_mfes page (50)", op_list_mfes, None),
    ("group_enumeration_next page (100)", op_enumeration, None),
    ("enumeration page (100) right after a new (S,G)", op_enum_after_change, 1),
    ("list_mfes page (100) right after a new MFE", op_list_after_change, 1),
    # last: they leave their MFEs behind (batch x repeat more of them each)
    ("new_packet + completion (deadlines)", op_new_packet, None),
    ("new_packet + completion (answered)", op_new_packet_answered, None),
]


def measure(benches: list[Bench], op: Op, batch: int, repeat: int, seed: int) -> list[float]:
    """Median seconds per operation over `repeat` batches, for each bench (setup and undo not timed).

    The benches take turns batch by batch, so that a load change on the
    machine hits both sizes alike.
    """
    rngs = [random.Random(seed) for _ in benches]
    times: list[list[float]] = [[] for _ in benches]
    for _ in range(repeat):
        for b, rng, spent in zip(benches, rngs, times, strict=True):
            setup, run, undo = op(b, batch, rng)
            setup()
            gc.collect()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            undo()
            spent.append(elapsed / batch)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k memberships instead of 1M (a smoke run)")
    parser.add_argument("--memberships", type=int, help="size of the large core (default 1M, --quick 100k)")
    parser.add_argument("--batch", type=int, default=1000, help="operations per timed batch")
    parser.add_argument("--repeat", type=int, default=7, help="timed batches per operation (median)")
    args = parser.parse_args(argv)
    large_n = args.memberships or (100_000 if args.quick else 1_000_000)
    small_n = 1_000

    t0 = time.perf_counter()
    small = Bench(small_n)
    small.build()
    rss_before = vmrss_kib()
    large = Bench(large_n)
    large.build()
    gc.collect()
    rss_after = vmrss_kib()
    build_s = time.perf_counter() - t0
    state = large.core
    mfes = len(state._mfes)  # read for the report only: the contract has no count
    print(f"built: small {small_n:,} memberships / {small.groups:,} MFEs; "
          f"large {large_n:,} memberships over {large.groups:,} groups and 8 interfaces / {mfes:,} MFEs "
          f"in {build_s:.1f} s ({large.events:,} events drained)")  # fmt: skip
    assert mfes == large.groups, f"expected {large.groups} MFEs, the core has {mfes}"

    rows = []
    for i, (name, op, per_batch) in enumerate(OPS):
        batch = per_batch or args.batch
        costs = measure([small, large], op, batch, args.repeat, seed=i)
        rows.append((name, costs[0], costs[1]))

    label = f"{large_n // 1000}k" if large_n < 1_000_000 else f"{large_n / 1_000_000:g}M"
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'operation':<{width}}  {'1k us/op':>10}  {label + ' us/op':>11}  {label + '/1k':>7}  goal <= 1.5x")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 11}  {'-' * 7}  ------------")
    for name, a, b in rows:
        ratio = b / a
        print(f"{name:<{width}}  {a * 1e6:>10.1f}  {b * 1e6:>11.1f}  {ratio:>7.2f}  {'ok' if ratio <= 1.5 else 'OVER'}")
    rss_mib = rss_after / 1024
    grew_mib = (rss_after - rss_before) / 1024
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"RSS after building the {label} core: {rss_mib:.0f} MiB (the core grew it by {grew_mib:.0f} MiB; "
          f"peak {peak_mib:.0f} MiB); goal < 1024 MiB: {'ok' if rss_mib < 1024 else 'OVER'}")  # fmt: skip
    print(f"total {time.perf_counter() - t0:.1f} s; batch {args.batch}, {args.repeat} repetitions, medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""100,000 MFEs into the nftables dataplane: our batch against one raw libnftables buffer of the same elements.

Runs in a network namespace of its own (created, and deleted at the end,
also on failure or Ctrl-C), with `--interfaces` interfaces (veth pairs inside it): the
first is every entry's incoming interface, the others make `--oils`
distinct output lists (shared OIL chains, as the forwarder makes them).
Each round times, on a fresh table, alternating the order:

* **dataplane**: `NftDataplane` (plugins/forwarder/nftables.py) as the
  Linux forwarder drives it: `add_mfc` for each (S,G), then
  `take_batch` / `run_batch` / `commit`, one transaction; also split into
  queueing, taking the batch, rendering its text, libnftables, committing;
* **mirror**: the same through `Mirror` (max_vifs=None, as on the nft
  backend), fed ``mfe_created`` events as the manager publishes them, so
  our bookkeeping is included (its logger at WARNING: the forwarder's
  per-entry INFO lines are not timed);
* **raw** (the baseline): the same elements (the ``sg`` and ``known`` maps'
  entries, the OIL chains) written as one libnftables text buffer,
  `Libnftables().run(text)`; the time to build the text is given apart.

The tables' rulesets (sets, maps, chains) are created before the clock
starts.  Reported: seconds per variant (median over rounds), entries per
second, and the ratios dataplane/raw and mirror/raw (goal: 100,000 in
<= 5 s).

    sudo .venv/bin/python bench/nft_install.py [--entries 100000] [--oils 4] [--interfaces 5] [--rounds 3]

Needs root and libnftables (Debian: libnftables1).  About 20 s a round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NS_PREFIX = "mgmbench-install"
TABLE = "mgmbench_install"


# --- inside the namespace ----------------------------------------------------------------------------


def _sg(i: int) -> tuple[str, str]:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", f"232.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _oils(outs: list[int], count: int) -> list[frozenset[int]]:
    """`count` distinct non-empty subsets of `outs`, the largest first."""
    subsets = [frozenset(c) for n in range(len(outs), 0, -1) for c in combinations(outs, n)]
    if count > len(subsets):
        raise ValueError(f"{len(outs)} outgoing interfaces make at most {len(subsets)} OILs, not {count}")
    return subsets[:count]


def _installed(nft: Any, table: str) -> int:
    """How many elements the table's sg map holds (a check that each variant installed them all)."""
    data = json.loads(nft.run(f"list map ip {table} sg", json_output=True))["nftables"]
    return sum(len(item["map"].get("elem", [])) for item in data if "map" in item)


def _dataplane(table: str, parent: int, outs: list[int], oils: list[frozenset[int]], entries: int) -> dict[str, float]:
    from mgm.plugins.forwarder.nftables import BatchResult, NftDataplane

    plane = NftDataplane(table=table)
    plane.open()
    for i in (parent, *outs):
        plane.add_vif(i, i)
    plane.flush()
    keys = [_sg(i) for i in range(entries)]
    t0 = time.perf_counter()
    for i, (source, group) in enumerate(keys):
        plane.add_mfc(source, group, parent, oils[i % len(oils)])
    t1 = time.perf_counter()
    batch = plane.take_batch()
    assert batch is not None
    t2 = time.perf_counter()
    text = plane.render(batch)
    t3 = time.perf_counter()
    plane.nft.run(text)  # what run_batch does for a batch without replaced entries (no counters to read)
    t4 = time.perf_counter()
    plane.commit(batch, BatchResult())
    t5 = time.perf_counter()
    assert len(plane.entries) == entries and _installed(plane.nft, table) == entries
    # The same through the public calls in one go, as the forwarder's batch task runs them.
    plane.remove()
    plane.open()
    for i in (parent, *outs):
        plane.add_vif(i, i)
    plane.flush()
    s0 = time.perf_counter()
    for i, (source, group) in enumerate(keys):
        plane.add_mfc(source, group, parent, oils[i % len(oils)])
    batch = plane.take_batch()
    assert batch is not None
    result = plane.run_batch(batch)
    plane.commit(batch, result)
    s1 = time.perf_counter()
    assert result.error is None and _installed(plane.nft, table) == entries
    plane.remove()
    plane.close()
    return {"total": s1 - s0, "queue": t1 - t0, "take_batch": t2 - t1, "render": t3 - t2, "libnftables": t4 - t3,
            "commit": t5 - t4}  # fmt: skip


def _mirror(table: str, parent: int, outs: list[int], oils: list[frozenset[int]], entries: int) -> dict[str, float]:
    from mgm.plugins.forwarder.mirror import Mirror
    from mgm.plugins.forwarder.nftables import NftDataplane

    plane = NftDataplane(table=table)
    plane.open()
    log = logging.getLogger("bench.mirror")
    log.setLevel(logging.WARNING)
    mirror = Mirror(plane, log, max_vifs=None)
    for i in (parent, *outs):
        mirror.apply({"type": "interface_owned", "protocol_id": 10, "component_id": 1, "if_index": i,
                      "next_hop": "0.0.0.0"})  # fmt: skip
    plane.flush()
    events = []
    for i in range(entries):
        source, group = _sg(i)
        events.append({"type": "mfe_created", "mfe": {
            "source": source, "group": group, "in_if_index": parent, "in_next_hop": "0.0.0.0",
            "upstream_neighbor": "0.0.0.0", "in_protocol_id": 10,
            "oil": [{"if_index": o, "next_hop": "0.0.0.0"} for o in sorted(oils[i % len(oils)])],
            "created": 0.0, "expires": 900.0, "timeout": 900.0}})  # fmt: skip
    t0 = time.perf_counter()
    for event in events:
        mirror.apply(event)
    t1 = time.perf_counter()
    batch = plane.take_batch()
    assert batch is not None
    result = plane.run_batch(batch)
    plane.commit(batch, result)
    t2 = time.perf_counter()
    assert result.error is None and len(mirror.installed) == entries and _installed(plane.nft, table) == entries
    plane.remove()
    plane.close()
    return {"total": t2 - t0, "mirror.apply": t1 - t0, "batch": t2 - t1}


def _raw(table: str, parent: int, outs: list[int], oils: list[frozenset[int]], entries: int) -> dict[str, float]:
    from mgm.plugins.forwarder.nftables import Libnftables, NftDataplane, oil_chain

    plane = NftDataplane(table=table)  # only for its ruleset text; the elements go in through libnftables alone
    nft = Libnftables()
    nft.run(plane.ruleset())
    nft.run(f"add element ip {table} ifs {{ {', '.join(str(i) for i in (parent, *outs))} }}")
    t0 = time.perf_counter()
    lines = []
    for oil in oils:
        name = oil_chain(oil)
        lines.append(f"add chain ip {table} {name}")
        lines += [f"add rule ip {table} {name} counter dup to ip daddr device {i}" for i in sorted(oil)]
    sg, known = [], []
    for i in range(entries):
        source, group = _sg(i)
        sg.append(f"{parent} . {source} . {group} : goto {oil_chain(oils[i % len(oils)])}")
        known.append(f"{source} . {group} : goto wrong_if")
    lines.append(f"add element ip {table} sg {{ {', '.join(sg)} }}")
    lines.append(f"add element ip {table} known {{ {', '.join(known)} }}")
    text = "\n".join(lines) + "\n"
    t1 = time.perf_counter()
    nft.run(text)
    t2 = time.perf_counter()
    assert _installed(nft, table) == entries
    nft.run(f"delete table ip {table}")
    nft.close()
    return {"total": t2 - t1, "text": t1 - t0}


def inside(entries: int, oils_wanted: int, interfaces: int, rounds: int) -> dict[str, Any]:
    """In the namespace: the dummy interfaces, then `rounds` rounds of the three variants, order rotating."""
    import socket

    for n in range(interfaces):
        # veth pairs, both ends here: this kernel may lack the dummy driver
        subprocess.run(["ip", "link", "add", f"d{n}", "type", "veth", "peer", "name", f"p{n}"], check=True)
        subprocess.run(["ip", "link", "set", f"d{n}", "up"], check=True)
        subprocess.run(["ip", "link", "set", f"p{n}", "up"], check=True)
    indexes = [socket.if_nametoindex(f"d{n}") for n in range(interfaces)]
    parent, outs = indexes[0], indexes[1:]
    oils = _oils(outs, oils_wanted)
    variants = {"raw": _raw, "dataplane": _dataplane, "mirror": _mirror}
    names = list(variants)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            results[name].append(variants[name](TABLE, parent, outs, oils, entries))
    return {"results": results, "oils": [sorted(o) for o in oils]}


# --- the run -------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="(S,G) entries installed at once")
    parser.add_argument("--oils", type=int, default=4, help="distinct output lists among them")
    parser.add_argument("--interfaces", type=int, default=5, help="interfaces: one incoming, the rest out")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three variants (medians reported)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(inside(args.entries, args.oils, args.interfaces, args.rounds)))
        return 0
    if os.geteuid() != 0:
        print("nft_install: needs root (a network namespace)", file=sys.stderr)
        return 2
    ns = f"{NS_PREFIX}-{os.getpid()}"
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--entries", str(args.entries),
            "--oils", str(args.oils), "--interfaces", str(args.interfaces), "--rounds", str(args.rounds)]  # fmt: skip
    started = time.monotonic()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc: subprocess.Popen[str] | None = None
    try:
        # start_new_session: a Ctrl-C reaches us, and we stop the child, whose namespace goes below
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        out, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"nft_install: the run inside the namespace failed (exit {proc.returncode})", file=sys.stderr)
            return 1
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    data = json.loads(out.strip().splitlines()[-1])
    results = data["results"]
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    n = args.entries
    print(f"nftables install: {n:,} (S,G) entries, {args.oils} OIL(s) {data['oils']} over {args.interfaces - 1} "
          f"outgoing interface(s), one transaction, {args.rounds} round(s), medians")  # fmt: skip
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    raw = med["raw"]["total"]
    for name, label in (("raw", "raw libnftables buffer (baseline)"), ("dataplane", "NftDataplane batch"),
                        ("mirror", "Mirror + NftDataplane")):  # fmt: skip
        total = med[name]["total"]
        every = ", ".join(f"{r['total']:.2f}" for r in results[name])
        print(f"  {label:<34} {total:7.2f} s  {n / total:9,.0f} entries/s  ratio to raw {total / raw:5.2f}   "
              f"(rounds: {every})")  # fmt: skip
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in med["dataplane"].items() if k != "total")
    print(f"  dataplane, step by step: {parts}")
    print(f"  mirror: apply() of the events {med['mirror']['mirror.apply']:.2f} s, then the batch "
          f"{med['mirror']['batch']:.2f} s")  # fmt: skip
    print(f"  raw: building its text {med['raw']['text']:.2f} s (not in its time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

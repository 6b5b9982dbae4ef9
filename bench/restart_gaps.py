"""What crashes cost on the real stack: plugin death, manager restart, forwarder restart (network namespaces).

The topology of tests/e2e/e2e_stack.py (sender, a router running `mgm up` with
igmp and the Linux forwarder, two receiving hosts), a stream every 5 ms, and
the three scenarios of tests/resilience/res_scenario.py run one after another
on it, `--rounds` times:

* plugin death: SIGKILL igmp; seconds until the manager deregisters it
  (liveness 3 s, so about 2.25-3 s plus a tick) and until its memberships are
  back (the restarted igmp queries, the hosts answer);
* manager restart: SIGKILL the manager; seconds until a new one answers and
  until its MFE table is complete and matches the kernel's (dominated by the
  forwarder's restart_grace, --grace), and packets lost on the established
  flow (goal 0);
* forwarder restart: SIGKILL the forwarder; packets lost and seconds until
  traffic flows again.  With MRT its VIFs and MFC entries are static and stay
  in the kernel, which forwards on them again as soon as the restarted
  forwarder has done MRT_INIT (the first thing it does); so the gap is the
  supervisor's first backoff plus the process start, not the ~3 s until the
  manager lets the new forwarder register.  With nftables the table goes on
  forwarding without any process (no gap expected).  The rows "kill -> ..."
  place the steps of the restart from the `mgm up` log's timestamps.

    sudo .venv/bin/python bench/restart_gaps.py [--rounds 2] [--grace 2.0] [--backend auto|mrt|nft]

Needs root; about 40 s per round.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT / "tests" / "resilience")]

from netns import Topology  # noqa: E402
from res_scenario import INTERVAL, forwarder_restart, manager_restart, plugin_death, setup  # noqa: E402

FORWARDER_STEPS = {
    "kill -> restarted (s)": r"\] mgm\.plugins\.supervisor: forwarder started",
    "kill -> dataplane open (s)": r"\[forwarder\] mgm\.plugins\.forwarder\.linux: backend (mrt|nft): ",
    "kill -> registered (s)": r"\[forwarder\] mgm\.plugins\.host: plugin forwarder registered",
    "kill -> first resync (s)": r"\[forwarder\] mgm\.plugins\.forwarder\.linux: resync:",
}
"""Steps of a forwarder restart, as the restarted forwarder's part of the `mgm up` log shows them."""


def steps(log: str, killed_wall: float) -> dict[str, float]:
    """Seconds from the kill to the first log line of each step (log timestamps: local time, milliseconds)."""
    found = {}
    for name, pattern in FORWARDER_STEPS.items():
        match = re.search(rf"^(\S+ \S+) .*{pattern}", log, re.M)
        if match is None:
            raise RuntimeError(f"no line for {name!r} in the restarted forwarder's log:\n{log}")
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found[name] = at - killed_wall
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grace", type=float, default=2.0, help="the forwarder's restart_grace (seconds)")
    parser.add_argument("--backend", default="auto", choices=("auto", "mrt", "nft"), help="the forwarder's backend")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("restart_gaps.py needs root (network namespaces)", file=sys.stderr)
        return 2
    rows: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    for r in range(args.rounds):
        with Topology() as topology:
            flow = setup(topology, backend=args.backend, restart_grace=args.grace)
            try:
                death = plugin_death(flow)
                note("plugin death: detection (s)", death.detection)
                note("plugin death: memberships back (s)", death.recovered)
                restart = manager_restart(flow)
                note("manager restart: answering (s)", restart.answered)
                note("manager restart: converged (s)", restart.convergence)
                note("manager restart: packets lost (max over receivers)", max(len(x) for x in restart.lost))
                fwd = forwarder_restart(flow)
                note("forwarder restart: traffic back (s)", fwd.gap)
                note("forwarder restart: packets lost (max over receivers)", max(fwd.lost))
                note("forwarder restart: gap from lost packets (s)", max(fwd.lost) * INTERVAL)
                for name, seconds in steps(fwd.log, fwd.killed_wall).items():
                    note(f"forwarder restart: {name}", seconds)
            finally:
                flow.stop_stream()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()), flush=True)
    print(f"\n{args.rounds} round(s), stream every {INTERVAL * 1000:.0f} ms, forwarder backend {args.backend}, "
          f"restart_grace {args.grace} s")
    for key, values in rows.items():
        print(f"{key:<55} median {statistics.median(values):8.2f}   max {max(values):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

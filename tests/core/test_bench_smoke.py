"""bench/scale.py runs and prints its table (a smoke run; timings are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCALE = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def test_scale_bench_quick_prints_the_table() -> None:
    argv = [sys.executable, str(SCALE), "--quick", "--batch", "200", "--repeat", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "100k/1k" in out
    rows = ("add_group_membership", "delete_group_membership", "OIL change", "new_packet + completion (deadlines)",
            "new_packet + completion (answered)", "get_mfe", "list_mfes page (50)", "group_enumeration_next page (100)")
    for op in rows:
        row = [line for line in out.splitlines() if line.startswith(op)]
        assert len(row) == 1, f"no row for {op} in:\n{out}"
        assert len(row[0].split()) >= 4
    assert "RSS after building the 100k core" in out

"""`mgm manager` refuses nonsensical numeric options with one line and status 2, before binding anything."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--liveness", "0", "--liveness must be a number of seconds > 0"),
        ("--question-deadline", "nan", "--question-deadline must be a number of seconds > 0"),
        ("--mfe-timeout", "-5", "--mfe-timeout must be a number of seconds > 0"),
        ("--events-hwm", "-1", "--events-hwm must be >= 1"),
    ],
)
def test_a_bad_number_is_one_line_and_status_2(option: str, value: str, message: str) -> None:
    rundir = tempfile.mkdtemp(prefix="mgm-")
    argv = [sys.executable, "-m", "mgm.core.cli", "manager", option, value]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, "MGM_RUNDIR": rundir})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(rundir, "api")), "refused before binding"
    os.rmdir(rundir)

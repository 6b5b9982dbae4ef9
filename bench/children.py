"""Child processes of the benchmarks: started in their own session, read line by line, stopped for sure."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

LINE_TIMEOUT = 30.0
"""Seconds a child may take to say its next line (start-up on a loaded machine included)."""


def spawn(*argv: str) -> subprocess.Popen[str]:
    """`python argv...` in a new session (so `stop` reaches its children too), stdout piped as text."""
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True, start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the child's process group, SIGKILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_line(proc: subprocess.Popen[str], timeout: float = LINE_TIMEOUT) -> str:
    """The child's next line; RuntimeError if it says nothing within `timeout` or exits first."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"{proc.args} said nothing within {timeout} s (exit status {proc.poll()})")
    return line.strip()


def has_line(proc: subprocess.Popen[str]) -> bool:
    """Whether a line (or the end) is waiting on the child's stdout."""
    assert proc.stdout is not None
    return bool(select.select([proc.stdout], [], [], 0)[0])

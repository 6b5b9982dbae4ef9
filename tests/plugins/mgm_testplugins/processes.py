"""Processes for the multi-process tests: the manager and plugins as children in their own process groups.

tests/conftest.py builds its fixtures from these; other test suites may too.  They live in
mgm.plugins.testing (the pytest plugin mgmbus ships); this module keeps the suites' imports working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The processes and the TOML writer are mgmbus's pytest plugin's (mgm.plugins.testing), shared with plugin authors.
from mgm.plugins.testing import MGM, STOP_GRACE, ManagerProc, PluginProc, Proc, toml_config, toml_value

__all__ = ["MGM", "STOP_GRACE", "ManagerProc", "PluginProc", "Proc", "StartUp", "pids_gone", "toml_config",
           "toml_value"]

StartUp = Callable[[Path], Proc]
"""The type of the fixture `start_up` (tests/conftest.py)."""


def pids_gone(pids: list[int]) -> bool:
    """True when none of `pids` is a live process (zombies of others' children count as gone)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            return False
    return True

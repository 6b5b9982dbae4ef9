"""The `mgm` command imports only the subcommand it runs (core/cli/__init__.py says so; this keeps it true)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mgm.core.cli import SUBCOMMANDS

PROBE = """
import json, sys
from mgm.core import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("mgm."))))
"""


def loaded(*argv: str) -> set[str]:
    """The mgm modules a fresh interpreter has loaded after `mgm ARGV` (here, --help: it exits at once)."""
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_a_subcommand_imports_its_own_module_and_no_other_subcommands(command: str) -> None:
    modules = loaded(command, "--help")
    others = {module for name, (module, _) in SUBCOMMANDS.items() if name != command}
    assert SUBCOMMANDS[command][0] in modules
    shared = {"mgm.core.cli.show"}  # show's helpers (monitor)
    assert not modules & (others - shared)
    if command in ("manager", "show", "monitor"):
        assert not any(m.startswith("mgm.plugins") for m in modules), modules
    if command in ("show", "monitor", "keys"):
        assert "mgm.core.state" not in modules


def test_mgm_help_imports_no_subcommand() -> None:
    assert not loaded("--help") & {module for module, _ in SUBCOMMANDS.values()}

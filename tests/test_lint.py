"""The code checks CI makes: ruff everywhere, mypy --strict on core/, bus/ and plugins/.

They run as tests so that the README's one test command is the whole gate.
mypy cannot see `mgm` in the tree (the package is assembled from three
folders by setuptools' package-dir), so it is pointed at a throw-away folder
of symlinks that has the installed shape.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    argv = [sys.executable, "-m", "ruff", "check", "core", "bus", "plugins", "tests", "bench"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_core_bus_and_plugins(tmp_path: Path) -> None:
    tree = tmp_path / "mgm"
    tree.mkdir()
    for folder in ("core", "bus", "plugins"):
        (tree / folder).symlink_to(ROOT / folder)
    argv = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "cache"), "-p", "mgm.core", "-p", "mgm.bus", "-p", "mgm.plugins"]  # fmt: skip
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

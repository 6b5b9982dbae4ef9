"""examples/hello-protocol as a plugin author gets it: pip-installed next to mgmbus in a fresh venv, tested there.

The fresh venv sees neither this checkout's editable install nor its test
plugins: mgmbus and the example are installed from their sources (regular,
not editable, installs), and the example's tests find the `mgm_bus` fixture
through mgmbus's pytest11 entry point, as a third party's tests would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-protocol"
COPY_IGNORE = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


def run(argv: list[str], cwd: Path, timeout: float) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_hello_protocol_installs_into_a_fresh_venv_and_its_tests_pass() -> None:
    work = Path(tempfile.mkdtemp(prefix="mgm-hello-"))
    try:
        venv = work / "venv"
        run([sys.executable, "-m", "venv", str(venv)], work, 60)
        python = str(venv / "bin" / "python")
        # Install from a copy: a regular install builds in the source folder (build/, *.egg-info),
        # and a test must not write into the checkout it tests.
        src = work / "src"
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*COPY_IGNORE))
        run([python, "-m", "pip", "install", "-q", str(src), str(src / EXAMPLE.relative_to(ROOT)), "pytest"],
            work, 240)  # fmt: skip
        # the plugin is found by its entry point, the fixture by pytest11
        names = "from importlib.metadata import entry_points as e; print([x.name for x in e(group='mgm.plugins')], "
        names += "[x.name for x in e(group='pytest11')])"
        found = run([python, "-c", names], work, 30)
        assert "'hello'" in found and "'mgm'" in found, found
        out = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")], work, 240)
        assert " passed" in out and "failed" not in out and "skipped" not in out, out
    finally:
        shutil.rmtree(work, ignore_errors=True)

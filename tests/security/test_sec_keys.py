"""`mgm keys generate` and `mgm keys list`."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import zmq.auth

from mgm.plugins.testing import MGM


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MGM, "keys", *args], capture_output=True, text=True, timeout=30)


def test_generate_writes_a_private_secret_and_prints_the_public_key(ipc_dir: Path) -> None:
    folder = ipc_dir / "new" / "keys"
    done = keys("generate", "pim-east", "--dir", str(folder))
    assert done.returncode == 0, done.stderr
    public, secret = zmq.auth.load_certificate(folder / "pim-east.key_secret")
    assert secret is not None
    assert done.stdout.split() == ["pim-east", public.decode()]
    assert stat.S_IMODE((folder / "pim-east.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert zmq.auth.load_certificate(folder / "pim-east.key") == (public, None)


def test_list_prints_each_name_and_z85_public_key(ipc_dir: Path) -> None:
    for name in ("b-host", "a-host"):
        assert keys("generate", name, "--dir", str(ipc_dir)).returncode == 0
    (ipc_dir / "b-host.key_secret").unlink()  # a key pair copied elsewhere: only its public half stays here
    done = keys("list", "--dir", str(ipc_dir))
    assert done.returncode == 0, done.stderr
    a, b = (f"{n} {zmq.auth.load_certificate(ipc_dir / f'{n}.key')[0].decode()}" for n in ("a-host", "b-host"))
    assert done.stdout.splitlines() == [a, f"{b}  (public only)"]


def test_generate_refuses_to_overwrite(ipc_dir: Path) -> None:
    assert keys("generate", "host", "--dir", str(ipc_dir)).returncode == 0
    before = (ipc_dir / "host.key_secret").read_bytes()
    again = keys("generate", "host", "--dir", str(ipc_dir))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (ipc_dir / "host.key_secret").read_bytes() == before
    (ipc_dir / "host.key_secret").unlink()  # half a pair left is refused too
    assert keys("generate", "host", "--dir", str(ipc_dir)).returncode == 1


def test_bad_names_and_missing_folders_are_errors(ipc_dir: Path) -> None:
    bad = keys("generate", "../etc/x", "--dir", str(ipc_dir))
    assert bad.returncode == 2 and "not a key name" in bad.stderr
    missing = keys("list", "--dir", str(ipc_dir / "nowhere"))
    assert missing.returncode == 1 and "no key folder" in missing.stderr


def test_keys_offers_no_bus_options_because_it_does_not_join_the_bus() -> None:
    done = keys("--help")
    assert done.returncode == 0 and "generate" in done.stdout
    for option in ("--api", "--events", "--curve-key", "--server-key", "--log-level"):
        assert option not in done.stdout
    assert keys("--api", "ipc:///x", "list").returncode == 2  # refused as unknown, not silently ignored

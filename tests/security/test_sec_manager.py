"""The manager's own rules: no tcp without CURVE, usable keys only, a private RUNDIR for ipc."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sec_support import Keys, free_port, manager_argv

from mgm.bus.endpoints import ensure_rundir
from mgm.plugins.testing import MGM, ManagerProc, wait_for


def run_manager(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A manager that must refuse to start: it exits on its own (bounded)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def test_the_manager_refuses_a_tcp_endpoint_without_a_key(ipc_dir: Path) -> None:
    api = f"tcp://127.0.0.1:{free_port()}"
    done = run_manager([*MGM, "manager", "--api", api, "--events", f"ipc://{ipc_dir}/events"])
    assert done.returncode == 2, done.stderr  # a configuration mistake: mgm up does not restart it
    assert f"refusing to bind {api} without CURVE" in done.stderr
    assert "curve_secret_key" in done.stderr and "mgm keys generate" in done.stderr


def test_the_events_endpoint_alone_on_tcp_is_refused_too(ipc_dir: Path) -> None:
    events = f"tcp://127.0.0.1:{free_port()}"
    done = run_manager([*MGM, "manager", "--api", f"ipc://{ipc_dir}/api", "--events", events])
    assert done.returncode == 2
    assert f"refusing to bind {events} without CURVE" in done.stderr
    assert not (ipc_dir / "api").exists(), "nothing was bound"


def test_a_secret_key_others_may_read_is_refused(ipc_dir: Path, keys: Keys) -> None:
    os.chmod(keys.secret("manager"), 0o644)
    config = ipc_dir / "m.toml"
    config.write_text("")
    done = run_manager(manager_argv(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", config,
                                    keys.secret("manager")))
    assert done.returncode == 2
    assert "readable by others" in done.stderr and "chmod 600" in done.stderr


def test_a_public_key_file_is_not_a_key_pair(ipc_dir: Path, keys: Keys) -> None:
    config = ipc_dir / "m.toml"
    config.write_text(f'[manager]\ncurve_secret_key = "keys/manager.key"\napi = "tcp://127.0.0.1:{free_port()}"\n')
    assert os.stat(keys.folder / "manager.key").st_mode & 0o044  # as generated: readable by others, as public keys are
    done = run_manager([*MGM, "manager", "--config", str(config), "--events", f"ipc://{ipc_dir}/events"])
    assert done.returncode == 2
    assert "holds no secret key" in done.stderr and "chmod" not in done.stderr  # the wrong file, not one to chmod


def test_a_key_in_the_config_binds_tcp_and_ipc_clients_stay_trusted(ipc_dir: Path, procs: list[Any]) -> None:
    """[manager] curve_secret_key (relative to the file) is enough for tcp; the ipc endpoint next to it needs none."""
    keys = Keys(ipc_dir / "keys")
    keys.make("manager")
    config = ipc_dir / "m.toml"
    config.write_text('[manager]\ncurve_secret_key = "keys/manager.key_secret"\n')
    api, events = f"ipc://{ipc_dir}/api", f"tcp://127.0.0.1:{free_port()}"
    proc = ManagerProc("manager", [*MGM, "manager", "--config", str(config), "--api", api, "--events", events],
                       ipc_dir / "manager.log", api=api, events=events)
    proc.start()
    procs.append(proc)
    wait_for(lambda: proc.ping() or not proc.alive(), 15, "the manager to answer on ipc")
    assert proc.alive(), proc.log()
    assert "CURVE on tcp: 0 client key(s) allowed" in proc.log()


def test_rundir_is_made_private(ipc_dir: Path) -> None:
    made = ensure_rundir(ipc_dir / "run" / "mgm")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    os.chmod(made, 0o755)  # someone loosened it: the next start tightens it again
    ensure_rundir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="chown needs root")
def test_a_rundir_of_another_user_is_refused(ipc_dir: Path) -> None:
    other = ipc_dir / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        ensure_rundir(other)


def test_the_manager_makes_its_default_rundir_0700(ipc_dir: Path, procs: list[Any]) -> None:
    """Without --api/--events the manager binds ipc in RUNDIR and creates RUNDIR 0700."""
    rundir = ipc_dir / "rundir"
    env = {**os.environ, "MGM_RUNDIR": str(rundir)}
    proc = ManagerProc("manager", [*MGM, "manager"], ipc_dir / "manager.log", api=f"ipc://{rundir}/api",
                       events=f"ipc://{rundir}/events")
    out = open(proc.log_path, "ab")  # noqa: SIM115 -- the child holds it
    try:
        proc.popen = subprocess.Popen(proc.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                      env=env)
    finally:
        out.close()
    procs.append(proc)
    wait_for(lambda: proc.ping() or not proc.alive(), 15, "the manager to answer in its RUNDIR")
    assert proc.alive(), proc.log()
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((rundir / "api").stat().st_mode) and stat.S_ISSOCK((rundir / "events").stat().st_mode)


def test_an_ipc_endpoint_in_a_directory_open_to_others_is_warned_about(ipc_dir: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from mgm.bus.server import BusServer

    async def bind(directory: Path) -> None:
        server = BusServer(f"ipc://{directory}/api", f"ipc://{directory}/events")
        await server.open()
        server.close()

    private, shared = ipc_dir / "private", ipc_dir / "shared"
    private.mkdir(mode=0o700)
    shared.mkdir()
    os.chmod(shared, 0o755)
    with caplog.at_level("WARNING", logger="mgm.bus.server"):
        asyncio.run(bind(private))
        assert not caplog.records
        asyncio.run(bind(shared))
    assert [r.getMessage() for r in caplog.records] == [
        f"the directory {shared} of an ipc endpoint is open to others (mode 755): anyone who can enter it can "
        "connect as any protocol; use a 0700 directory such as RUNDIR"]

"""deploy/: the systemd units parse (systemd-analyze verify), run real `mgm` subcommands, and the configs load."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mgm.core.cli import SUBCOMMANDS, build_parser
from mgm.core.runtime.config import load

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SERVICES = ["mgm-manager.service", "mgm-plugin@.service"]
RAW_SOCKET_PLUGINS = ["igmp", "forwarder"]
INSTALLED_MGM = "/usr/local/bin/mgm"


def unit(path: Path) -> configparser.RawConfigParser:
    """A unit file as sections of keys (systemd repeats keys: the last value wins here, which these tests need)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def exec_argv(path: Path, instance: str = "igmp") -> list[str]:
    argv = shlex.split(unit(path)["Service"]["ExecStart"].replace("%i", instance))
    assert argv[0] == INSTALLED_MGM, argv
    return argv


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_an_mgm_subcommand_with_known_options(name: str) -> None:
    argv = exec_argv(UNITS / name)
    assert argv[1] in SUBCOMMANDS
    args = build_parser().parse_args(argv[1:])  # an unknown option or value exits here (SystemExit)
    assert args.log_format == "json"


@pytest.mark.parametrize("name", SERVICES)
def test_services_are_sandboxed_without_capabilities(name: str) -> None:
    service = unit(UNITS / name)["Service"]
    assert service["User"] == "mgm" and service["Environment"] == "MGM_RUNDIR=/run/mgm"
    sandbox = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
               "CapabilityBoundingSet": "", "AmbientCapabilities": "", "ReadWritePaths": "/run/mgm"}  # fmt: skip
    for key, value in sandbox.items():
        assert service[key] == value, key
    # 2: a configuration mistake; 3 (plugins): the machine lacks what the plugin needs. Restarts repeat both.
    assert service["RestartPreventExitStatus"] == ("2" if name == "mgm-manager.service" else "2 3")
    families = set(service["RestrictAddressFamilies"].split())
    assert {"AF_UNIX", "AF_INET"} <= families and not families & {"AF_BLUETOOTH", "AF_CAN", "AF_X25"}
    assert unit(UNITS / name)["Install"]["WantedBy"] == "mgm.target"
    assert unit(UNITS / name)["Unit"]["PartOf"] == "mgm.target"


@pytest.mark.parametrize("plugin", RAW_SOCKET_PLUGINS)
def test_only_raw_socket_plugins_get_net_raw_and_net_admin(plugin: str) -> None:
    (dropin,) = (UNITS / f"mgm-plugin@{plugin}.service.d").glob("*.conf")
    service = unit(dropin)["Service"]
    assert service["CapabilityBoundingSet"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert service["AmbientCapabilities"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    others = [d.name for d in UNITS.glob("mgm-plugin@*.service.d")]
    assert sorted(others) == sorted(f"mgm-plugin@{p}.service.d" for p in RAW_SOCKET_PLUGINS)


def test_tmpfiles_makes_a_private_runtime_directory() -> None:
    lines = [ln.split() for ln in (UNITS / "mgm.tmpfiles").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [["d", "/run/mgm", "0700", "mgm", "mgm", "-"]]
    users = [ln.split()[:2] for ln in (UNITS / "mgm.sysusers").read_text().splitlines() if ln and ln[0] != "#"]
    assert users == [["u", "mgm"]]


def test_target_groups_the_manager() -> None:
    target = unit(UNITS / "mgm.target")
    assert target["Unit"]["Wants"] == "mgm-manager.service"
    assert target["Install"]["WantedBy"] == "multi-user.target"


def test_remote_plugin_config_loads_with_tcp_endpoints_and_curve_keys() -> None:
    config = load(str(ROOT / "deploy" / "remote-plugin.toml"))
    assert config.manager.api is not None and config.manager.api.startswith("tcp://")
    assert config.manager.events is not None and config.manager.events.startswith("tcp://")
    assert [ref.name_or_index for ref in config.plugin("hello").interfaces] == [2, 3, 4]
    assert config.manager.curve_server_public_key is not None  # tcp needs CURVE: the manager's public key ...
    assert config.plugin("hello").curve_key is not None  # ... and the plugin's own key pair


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (apt-get install systemd): CI must verify the units")
        pytest.skip("systemd-analyze is not installed")
    mgm = str(Path(sys.executable).parent / "mgm")  # the console script of the environment running the tests
    assert os.access(mgm, os.X_OK), f"no mgm command at {mgm}"
    # verify checks that ExecStart's program exists: point the copies at this machine's mgm
    for src in [*UNITS.glob("*.service"), UNITS / "mgm.target"]:
        (tmp_path / src.name).write_text(src.read_text().replace(INSTALLED_MGM, mgm))
    names = ["mgm-manager.service", "mgm.target"]
    for plugin in [*RAW_SOCKET_PLUGINS, "static"]:
        name = f"mgm-plugin@{plugin}.service"
        shutil.copy(tmp_path / "mgm-plugin@.service", tmp_path / name)
        dropins = UNITS / f"{name}.d"
        if dropins.is_dir():
            shutil.copytree(dropins, tmp_path / f"{name}.d")
        names.append(name)
    result = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    ours = [ln for ln in (result.stdout + result.stderr).splitlines() if "mgm" in ln]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr

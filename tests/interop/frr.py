"""FRR (Debian's frr 8.4: zebra + pimd) as a router inside a namespace of a `netns.Topology`.

The interop tests put FRR beside mgmbus's own routers; this module starts and queries it::

    from frr import FrrRouter, pimd_config

    ra, rb = topology.namespaces("rtra", "rtrb")
    link = topology.link(ra, rb, "10.0.0.1/24", "10.0.0.2/24")           # ra's r1 <-> rb's r1
    a = FrrRouter(ra, pimd_config(pim=["r1"], rp="10.0.0.1")).start()   # zebra, then pimd
    b = FrrRouter(rb, pimd_config(pim=["r1"], rp="10.0.0.1")).start()
    wait_until(lambda: "10.0.0.2" in a.pim_neighbors(), 30, "ra to see rb")
    print(a.vty("show ip pim rp-info"))            # text, as vtysh prints it
    a.json("show ip pim neighbor")                 # `... json`, parsed

Each router has a directory of its own under the topology's workdir (configs, logs, and a
``run`` directory with the daemons' vty sockets, zserv.api and pid files), so any number
of routers share one file system and nothing of /etc/frr or /var/run/frr is used.  The
daemons run in the foreground as processes of the topology (`NsProcess`), so
`Topology.close` stops them and deletes their directories, also when a test fails; their
log files are part of `Topology.logs()`.

How FRR has to be started (the same way FRR's own topotests do it):

- ``-f CONF -i PIDFILE -z ZSERV --vty_socket DIR -P 0 --log file:LOG``: own config, pid
  file, zebra socket and vty socket directory; ``-P 0``: no TCP vty.
- zebra first, and pimd only once zebra's vty socket exists (pimd learns its RPF routes
  from zebra, which learns the kernel's routes).
- Debian's FRR refuses ``-u root`` (root is not in its vty group), so the daemons drop to
  user ``frr``: the router's directories are chowned to it, and the directories above
  them are made traversable.
- FRR keeps a crash log under the fixed path /var/tmp/frr/DAEMON.PID, which a killed
  daemon leaves behind (and which, under User-mode Linux, is this machine's /var/tmp):
  each daemon gets a private tmpfs on /var/tmp instead, gone with the daemon.

pimd needs the kernel's multicast routing socket (MRT_INIT): tests using FRR are marked
`mroute` and run in User-mode Linux where this kernel lacks it (scripts/test).
"""

from __future__ import annotations

import contextlib
import grp
import json as jsonlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns import Namespace, NetnsError, NsProcess, wait_until

FRR_DIR = Path("/usr/lib/frr")
"""Where Debian's frr package puts its daemons."""
VTYSH = "vtysh"
FRR_USER = "frr"
DAEMONS = ("zebra", "pimd")
START_TIMEOUT = 30.0
"""Seconds (times MGM_TEST_TIME_SCALE) a daemon has to open its vty socket; 3-7 s in UML."""
VTY_TIMEOUT = 30.0


class FrrError(Exception):
    """FRR could not be started or a vtysh command failed; the message has the output (and logs)."""


def frr_missing() -> str | None:
    """Why FRR cannot be used here (the package is not installed), or None."""
    missing = [str(FRR_DIR / d) for d in DAEMONS if not os.access(FRR_DIR / d, os.X_OK)]
    if shutil.which(VTYSH) is None:
        missing.append(VTYSH)
    if missing:
        return f"FRR is not installed ({', '.join(missing)} missing): scripts/system-packages installs frr"
    try:
        pwd.getpwnam(FRR_USER)
    except KeyError:
        return f"FRR's user {FRR_USER!r} does not exist (is the frr package installed?)"
    return None


def pimd_config(*, pim: Iterable[str] = (), igmp: Iterable[str] = (), rp: str | None = None,
                rp_range: str = "224.0.0.0/4", hello: tuple[int, int] | None = (5, 15),
                igmp_query_interval: int | None = 10, igmp_last_member_query_interval: int | None = 5,
                extra: str = "", interface_extra: str = "") -> str:  # fmt: skip
    """A pimd.conf: `pim` interfaces get ``ip pim`` (and hello timers), `igmp` ones ``ip igmp``.

    `rp`: a static RP for `rp_range`.  `hello`: ``ip pim hello INTERVAL HOLDTIME`` (None: FRR's
    30 s default).  The IGMP intervals are in seconds and tenths of a second as FRR takes them
    (10 and 5: query every 10 s, last member query interval 0.5 s); None keeps FRR's default.
    `extra` goes before the interfaces (``debug pim events``, ``ip pim spt-switchover
    infinity-and-beyond``...), `interface_extra` into every interface block.
    """
    pim, igmp = list(pim), list(igmp)
    lines = [line for line in extra.splitlines() if line.strip()]
    if rp is not None:
        lines.append(f"ip pim rp {rp} {rp_range}")
    for ifname in dict.fromkeys([*pim, *igmp]):
        lines.append(f"interface {ifname}")
        if ifname in pim:
            lines.append(" ip pim")
            if hello is not None:
                lines.append(f" ip pim hello {hello[0]} {hello[1]}")
        if ifname in igmp:
            lines.append(" ip igmp")
            if igmp_query_interval is not None:
                lines.append(f" ip igmp query-interval {igmp_query_interval}")
            if igmp_last_member_query_interval is not None:
                lines.append(f" ip igmp last-member-query-interval {igmp_last_member_query_interval}")
        lines += [f" {line.strip()}" for line in interface_extra.splitlines() if line.strip()]
        lines.append("exit")
    return "\n".join(lines) + "\n"


@dataclass
class FrrDaemon(NsProcess):
    """One FRR daemon of a router: its log() is its stdout and stderr, then its log file."""

    log_file: Path | None = None

    def log(self) -> str:
        text = super().log()
        if self.log_file is not None and self.log_file.exists():
            text += f"--- {self.log_file.name} ---\n{self.log_file.read_text(errors='replace')}"
        return text


class FrrRouter:
    """FRR's zebra and pimd (or other `daemons`) inside `ns`, configured with `config` (pimd's).

    `config` is pimd's configuration (`pimd_config` writes one); `zebra_config` zebra's
    (nothing but the hostname by default); `configs` gives any daemon its text.  A
    ``hostname`` line (the namespace's role) is added where a config has none.
    """

    def __init__(self, ns: Namespace, config: str = "", *, zebra_config: str = "",
                 configs: dict[str, str] | None = None, daemons: Sequence[str] = DAEMONS) -> None:  # fmt: skip
        if not daemons or daemons[0] != "zebra":
            raise ValueError("zebra must be the first daemon: the others connect to it")
        self.ns = ns
        self.name = ns.role
        self.daemons = list(daemons)
        self.configs = {"zebra": zebra_config, "pimd": config, **(configs or {})}
        self.dir = ns.topology.workdir / f"frr-{ns.role}"
        self.run_dir = self.dir / "run"
        self.processes: dict[str, FrrDaemon] = {}

    # --- paths ---------------------------------------------------------------------------

    def conf_path(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.conf"

    def log_path(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.log"

    @property
    def zserv(self) -> Path:
        return self.run_dir / "zserv.api"

    # --- life ----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> FrrRouter:
        """Write the configs, start each daemon (zebra first) and wait for its vty socket.

        FrrError (with the daemon's output and log) if one exits or opens no socket in time.
        """
        why = frr_missing()
        if why is not None:
            raise FrrError(why)
        self._prepare_dirs()
        # a router forwards unicast too (a sender's registers, RPF towards the RP)
        self.ns.sysctl("net.ipv4.ip_forward", 1)
        for daemon in self.daemons:
            self._start_daemon(daemon, timeout)
        return self

    def _prepare_dirs(self) -> None:
        uid, gid = pwd.getpwnam(FRR_USER).pw_uid, grp.getgrnam(FRR_USER).gr_gid
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the topology's workdir is mkdtemp's (0700): user frr must get through it to its own
        workdir = self.dir.parent
        workdir.chmod(workdir.stat().st_mode | 0o711)
        for daemon in self.daemons:
            text = self.configs.get(daemon, "")
            if not any(line.strip().startswith("hostname ") for line in text.splitlines()):
                text = f"hostname {self.name}\n{text}"
            self.conf_path(daemon).write_text(text if text.endswith("\n") else text + "\n")
        for path in (self.dir, *self.dir.iterdir()):  # the run directory, the configs
            os.chown(path, uid, gid)

    def _start_daemon(self, daemon: str, timeout: float) -> None:
        argv = [str(FRR_DIR / daemon), "-f", str(self.conf_path(daemon)), "-i", str(self.run_dir / f"{daemon}.pid"),
                "-z", str(self.zserv), "--vty_socket", str(self.run_dir), "-P", "0",
                "--log", f"file:{self.log_path(daemon)}"]  # fmt: skip
        # a private tmpfs on /var/tmp (FRR's crash log directory), then exec: the pid stays the daemon's
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o mode=1777 frr-tmp /var/tmp && exec "$@"', "sh", *argv]  # fmt: skip
        proc = self.ns.popen(wrapped, f"{self.name}.{daemon}", cls=FrrDaemon)
        assert isinstance(proc, FrrDaemon)
        proc.log_file = self.log_path(daemon)
        self.processes[daemon] = proc
        socket_path = self.run_dir / f"{daemon}.vty"

        def up() -> bool:
            if not proc.alive():
                raise FrrError(f"{daemon} on {self.name} exited {proc.popen.returncode}:\n{proc.log()}")
            return socket_path.is_socket()

        try:
            wait_until(up, timeout, f"{daemon} on {self.name} to open {socket_path}")
        except TimeoutError as e:
            raise FrrError(f"{e}\n{proc.log()}") from None

    def alive(self) -> bool:
        """Every daemon started is still running."""
        return bool(self.processes) and all(p.alive() for p in self.processes.values())

    def stop(self) -> None:
        """Stop the daemons, the last started first (Topology.close does it too, also on failure)."""
        for daemon in reversed(list(self.processes)):
            with contextlib.suppress(Exception):
                self.processes[daemon].stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.log()}" for p in self.processes.values())

    # --- vtysh ---------------------------------------------------------------------------

    def vty(self, *commands: str, daemon: str | None = None, timeout: float = VTY_TIMEOUT) -> str:
        """Run vtysh `commands` (``show ...``, or ``configure terminal`` and what follows) on this
        router (only on `daemon` if given); their output.  FrrError if vtysh fails."""
        argv = [VTYSH, "--vty_socket", str(self.run_dir)]
        if daemon is not None:
            argv += ["-d", daemon]
        for command in commands:
            argv += ["-c", command]
        try:
            proc = self.ns.run(*argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise FrrError(f"vtysh {commands} on {self.name} did not return in {e.timeout:g} s") from None
        except NetnsError as e:
            raise FrrError(str(e)) from None
        if proc.returncode != 0:
            state = "running" if self.alive() else "not all running"
            raise FrrError(f"vtysh {list(commands)} on {self.name} exited {proc.returncode} (daemons {state}): "
                           f"{(proc.stdout + proc.stderr).strip()}")  # fmt: skip
        return proc.stdout

    def json(self, command: str, *, daemon: str | None = None) -> Any:
        """``COMMAND json`` (json is added when missing), parsed; FrrError if it is no JSON."""
        if command.split()[-1] != "json":
            command += " json"
        text = self.vty(command, daemon=daemon)
        try:
            return jsonlib.loads(text) if text.strip() else {}
        except jsonlib.JSONDecodeError as e:
            raise FrrError(f"{command!r} on {self.name}: no JSON ({e}): {text[:2000]}") from None

    def configure(self, *lines: str, daemon: str | None = None) -> str:
        """Change the running configuration: ``configure terminal`` then `lines`."""
        return self.vty("configure terminal", *lines, daemon=daemon)

    # --- what tests ask most -------------------------------------------------------------

    def pim_neighbors(self, ifname: str | None = None) -> set[str]:
        """The addresses of this router's PIM neighbors (on `ifname` only, if given)."""
        table = self.json("show ip pim neighbor")
        found: set[str] = set()
        for interface, neighbors in table.items():
            if ifname is None or interface == ifname:
                found.update(neighbors if isinstance(neighbors, dict) else ())
        return found


def require_frr() -> None:
    """Skip the calling test when FRR is not installed, but fail under CI=true (every test must run there)."""
    why = frr_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true forbids skipping")
    pytest.skip(why)

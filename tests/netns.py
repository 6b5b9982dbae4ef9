"""Network-namespace topologies for the end-to-end tests (the one harness they all share).

A test builds hosts and routers as namespaces joined by veth links, runs
commands, Python functions and long-running processes inside them, and
gets everything removed afterwards, also when it fails::

    from netns import Topology, send_udp   # and in your conftest.py: from netns import topology

    def test_something(topology: Topology) -> None:
        sender, router, receiver = topology.namespaces("snd", "rtr", "rcv")
        up = topology.link(sender, router, "10.1.0.2/24", "10.1.0.1/24")     # sender's eth0 <-> router's r1
        down = topology.link(router, receiver, "10.2.0.1/24", "10.2.0.2/24")
        sender.multicast_route(up.a)                     # senders need a route for 224.0.0.0/4
        rx = receiver.receiver("239.1.2.3", 5000)        # a process that joins and counts
        rx.wait_joined()
        sender.call(send_udp, "239.1.2.3", 5000, 10)     # a function run inside the namespace
        rx.wait_count(10)

Names are unique per run (``mgmtest-PID-N-role``), so parallel runs never
collide; interfaces are created directly inside their namespaces, so their
names (at most 15 characters) only need to be unique there.  Namespaces
left behind by a crashed earlier run (their PID is gone) are deleted when
the next topology starts.

Everything here needs root; `require_root` skips, except under ``CI=true``
where it fails, because CI runs as root and must run every test.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mgm.plugins.igmp import packet
from mgm.plugins.testing import scaled, wait_for

PREFIX = "mgmtest"
IFNAMSIZ = 15
"""Longest interface name the kernel takes."""
STOP_GRACE = 3.0
CMD_TIMEOUT = 30.0
"""Both (and every wait here) are multiplied by MGM_TEST_TIME_SCALE (mgm.plugins.testing.scaled)."""
IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
IP_DROP_SOURCE_MEMBERSHIP = getattr(socket, "IP_DROP_SOURCE_MEMBERSHIP", 40)
ETH_P_ALL, ETH_P_IP, IPPROTO_IGMP = 0x0003, 0x0800, 2

_counter = 0


class NetnsError(Exception):
    """A command inside a namespace failed; the message has its output."""


def require_root() -> None:
    """Skip the calling test when not root, but fail under CI=true (where every test must run)."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("this test needs root (network namespaces), and CI=true forbids skipping it")
    pytest.skip("needs root (network namespaces)")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something true; TimeoutError naming `what` (and the last value) otherwise.

    `timeout` is multiplied by MGM_TEST_TIME_SCALE (see `wait_for`).
    """
    return wait_for(predicate, timeout, what)


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT,
         input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(timeout), input=input,
                          check=False)  # fmt: skip
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# --- processes inside a namespace ------------------------------------------------------------


@dataclass
class NsProcess:
    """A long-running process inside a namespace, in its own process group, output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the process printed so far (its other lines are skipped)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM the group, wait up to `grace`, SIGKILL what is left; the leader's exit status."""
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(scaled(grace))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.wait()


class Receiver(NsProcess):
    """A `receive` process: joined to one group, printing one JSON line per datagram."""

    def packets(self) -> list[dict[str, Any]]:
        """Every datagram so far: ``{"src", "len", "seq"}`` (seq from the payload of `send_udp`)."""
        return [e for e in self.events() if e.get("event") == "packet"]

    def count(self, source: str | None = None) -> int:
        return sum(1 for p in self.packets() if source is None or p["src"] == source)

    def wait_joined(self, timeout: float = 10.0) -> None:
        def joined() -> bool:
            if not self.alive():
                raise NetnsError(f"receiver {self.name} exited {self.popen.returncode}:\n{self.log()}")
            return any(e.get("event") == "joined" for e in self.events())

        wait_until(joined, timeout, f"receiver {self.name} to join")

    def wait_count(self, n: int, timeout: float = 10.0, source: str | None = None) -> int:
        """Wait until at least `n` datagrams (from `source`, if given) arrived; the count."""
        return int(wait_until(lambda: (c := self.count(source)) >= n and c, timeout,
                              f"{n} datagram(s) at receiver {self.name} (have {self.count(source)})"))  # fmt: skip

    def leave(self, timeout: float = 10.0) -> None:
        """Drop the membership (the process goes on counting, so a test can see nothing more arrives)."""
        self.signal(signal.SIGUSR1)
        wait_until(lambda: any(e.get("event") == "left" for e in self.events()), timeout,
                   f"receiver {self.name} to leave")  # fmt: skip


# --- namespaces and links ---------------------------------------------------------------------


@dataclass
class Namespace:
    """One network namespace of a `Topology`."""

    name: str
    role: str
    topology: Topology

    def run(self, *argv: str, check: bool = True, timeout: float = CMD_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a command inside the namespace; NetnsError (with its output) if it fails and `check`."""
        return _run(["ip", "netns", "exec", self.name, *argv], check=check, timeout=timeout, input=input)

    def sh(self, script: str, check: bool = True) -> str:
        """Run a shell script inside the namespace; its stdout."""
        return self.run("sh", "-ec", script, check=check).stdout

    def ip(self, *args: str, check: bool = True) -> str:
        return _run(["ip", "-n", self.name, *args], check=check).stdout

    def if_index(self, ifname: str) -> int:
        out = self.ip("-o", "link", "show", "dev", ifname)
        return int(out.split(":", 1)[0])

    def sysctl(self, key: str, value: str | int) -> None:
        self.sh(f"echo {value} > /proc/sys/{key.replace('.', '/')}")

    def multicast_route(self, ifname: str) -> None:
        """Route 224.0.0.0/4 out of `ifname`: a sender needs it (without it sendto fails, no route)."""
        self.ip("route", "replace", "224.0.0.0/4", "dev", ifname)

    def call(self, func: Callable[..., Any], *args: Any, timeout: float = CMD_TIMEOUT, **kwargs: Any) -> Any:
        """Run a module-level function inside the namespace (a new Python process); its result.

        Arguments and result travel as JSON, so they must be JSON values.
        """
        proc = self.run(*_python_call_argv(func), timeout=timeout,
                        input=json.dumps({"args": args, "kwargs": kwargs}), check=False)  # fmt: skip
        if proc.returncode != 0:
            raise NetnsError(f"{func.__qualname__} in {self.name} exited {proc.returncode}:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])["result"]

    def popen(self, argv: Sequence[str], name: str | None = None, *,
              env: dict[str, str] | None = None, cls: type[NsProcess] = NsProcess) -> NsProcess:  # fmt: skip
        """Start a long-running process inside the namespace (own process group, killed at teardown)."""
        label = name or Path(argv[0]).name
        log_path = self.topology.workdir / f"{self.role}-{label}-{len(self.topology.processes)}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=None if env is None else {**os.environ, **env})  # fmt: skip
        proc = cls(label, popen, log_path)
        self.topology.processes.append(proc)
        return proc

    def spawn(self, func: Callable[..., Any], *args: Any, name: str | None = None,
              cls: type[NsProcess] = NsProcess, **kwargs: Any) -> NsProcess:  # fmt: skip
        """Run a module-level function as a long-running process inside the namespace."""
        blob = json.dumps({"args": args, "kwargs": kwargs})
        return self.popen([*_python_call_argv(func), blob], name or func.__name__, cls=cls)

    def mgm(self, *args: str, name: str | None = None) -> NsProcess:
        """``mgm ARGS...`` (manager, plugin, up) as a long-running process inside the namespace."""
        return self.popen([sys.executable, "-m", "mgm.core.cli", *args], name or f"mgm-{args[0] if args else ''}")

    def mgm_up(self, tables: str, *, backend: str) -> NsProcess:
        """``mgm up`` on ``router.toml`` in the topology's workdir: the manager on ipc endpoints there, the
        forwarder on `backend`, and `tables` (more plugin tables)."""
        work = self.topology.workdir
        config = work / "router.toml"
        config.write_text(f"""\
[manager]
api = "ipc://{work}/api"
events = "ipc://{work}/events"
log_level = "debug"

[plugins.forwarder]
backend = "{backend}"

{tables}""")
        return self.mgm("up", "--config", str(config), name="mgm-up")

    def receiver(self, group: str, port: int, *, source: str | None = None, ifname: str | None = None,
                 name: str | None = None) -> Receiver:  # fmt: skip
        """A process joined to `group` ((`source`, group) when given) counting datagrams to `port`."""
        proc = self.spawn(receive, group, port, source=source, ifname=ifname, name=name or f"rx-{group}", cls=Receiver)
        assert isinstance(proc, Receiver)
        return proc


@dataclass
class Link:
    """A veth pair: `a_if` in namespace `a`, `b_if` in namespace `b`."""

    a: Namespace
    b: Namespace
    a_if: str
    b_if: str
    a_addr: str | None
    b_addr: str | None

    @property
    def a_ip(self) -> str | None:
        return None if self.a_addr is None else self.a_addr.split("/")[0]

    @property
    def b_ip(self) -> str | None:
        return None if self.b_addr is None else self.b_addr.split("/")[0]

    def if_index(self, ns: Namespace) -> int:
        """The if_index of this link's end inside `ns`."""
        return ns.if_index(self.a_if if ns is self.a else self.b_if)


@dataclass
class Topology:
    """Namespaces, links and processes of one test; `close` removes them all."""

    prefix: str = PREFIX
    run_id: str = ""
    namespaces_: list[Namespace] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    processes: list[NsProcess] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mgm-ns-")))

    def __post_init__(self) -> None:
        global _counter
        _counter += 1
        self.run_id = self.run_id or f"{self.prefix}-{os.getpid()}-{_counter}"
        remove_leftovers(self.prefix)

    def namespace(self, role: str) -> Namespace:
        """A new namespace with `lo` up and rp_filter off (namespaces inherit the host's defaults)."""
        ns = Namespace(f"{self.run_id}-{role}", role, self)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces_.append(ns)
        ns.sh(
            "ip link set dev lo up\n"
            "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter\n"
            "echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter\n"
        )
        return ns

    def namespaces(self, *roles: str) -> list[Namespace]:
        return [self.namespace(role) for role in roles]

    def link(self, a: Namespace, b: Namespace, a_addr: str | None = None, b_addr: str | None = None, *,
             a_if: str | None = None, b_if: str | None = None) -> Link:  # fmt: skip
        """A veth pair between `a` and `b`, addressed (CIDR strings) and up, rp_filter off on both ends.

        Default names: ``r1``, ``r2``... in a router (a role starting with
        ``rtr`` or ``router``), else ``eth0``, ``eth1``...; pass
        `a_if`/`b_if` to choose.
        """
        a_if = a_if or self._next_ifname(a)
        b_if = b_if or self._next_ifname(b)
        for name in (a_if, b_if):
            if len(name) > IFNAMSIZ:
                raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
        _run(["ip", "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name])
        link = Link(a, b, a_if, b_if, a_addr, b_addr)
        self.links.append(link)
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            script = f"echo 0 > /proc/sys/net/ipv4/conf/{ifname}/rp_filter\n"
            if addr is not None:
                script += f"ip addr add {addr} dev {ifname}\n"
            script += f"ip link set dev {ifname} up\n"
            ns.sh(script)
        return link

    def lan(self, members: Sequence[tuple[Namespace, str | None]], role: str = "sw") -> list[Link]:
        """One shared segment: a namespace `role` with a bridge (multicast snooping off, so it floods
        multicast like a hub) and a link from each (namespace, address) member to it.  The links'
        `a` ends are the members' interfaces."""
        switch = self.namespace(role)
        switch.ip("link", "add", "name", "br0", "type", "bridge", "mcast_snooping", "0")
        switch.ip("link", "set", "dev", "br0", "up")
        links: list[Link] = []
        for ns, addr in members:
            link = self.link(ns, switch, addr, None, b_if=f"p{len(links)}")
            switch.ip("link", "set", "dev", link.b_if, "master", "br0")
            links.append(link)
        return links

    def _next_ifname(self, ns: Namespace) -> str:
        used = {link.a_if for link in self.links if link.a is ns} | {link.b_if for link in self.links if link.b is ns}
        router = ns.role.startswith(("rtr", "router"))
        for n in range(0 if not router else 1, 1000):
            name = f"r{n}" if router else f"eth{n}"
            if name not in used:
                return name
        raise ValueError(f"no free interface name in {ns.name}")

    def close(self) -> None:
        """Kill every process group, delete every namespace (their veths go with them) and the workdir."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in reversed(self.namespaces_):
            _run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces_.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the processes' logs (printed first on failure)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.log()}" for p in self.processes)

    @contextlib.contextmanager
    def on_timeout(self, what: str) -> Iterator[None]:
        """A TimeoutError inside becomes an AssertionError saying `what` and the wait that ran out, with every
        process's log (a test's main expectation failing reads as such, not as a slow wait)."""
        try:
            yield
        except TimeoutError as exc:
            raise AssertionError(f"{what} ({exc}):\n{self.logs()}") from None

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named ``PREFIX-PID-...`` whose PID no longer runs (a crashed earlier run)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    removed = []
    for name in (line.split()[0] for line in out.splitlines() if line.split()):
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == prefix and parts[1].isdigit() and not Path(f"/proc/{parts[1]}").exists():
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


@dataclass
class Node:
    """One namespace on a shared link: its interface there and its address."""

    ns: Namespace
    ifname: str
    address: str

    @property
    def if_index(self) -> int:
        return self.ns.if_index(self.ifname)


def segment(topology: Topology, subnet: str, **nodes: int) -> dict[str, Node]:
    """Namespaces named by `nodes` (role -> last octet of its address in `subnet`, a /24 like "10.77.0") on one
    `Topology.lan`."""
    members = [(topology.namespace(role), f"{subnet}.{octet}") for role, octet in nodes.items()]
    links = topology.lan([(ns, f"{address}/24") for ns, address in members])
    for link in links:
        link.a.multicast_route(link.a_if)
    return {ns.role: Node(ns, link.a_if, address) for (ns, address), link in zip(members, links, strict=True)}


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A `Topology` removed at teardown; on failure the logs of its processes are printed."""
    require_root()
    topo = Topology()
    try:
        yield topo
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(topo.logs())
        topo.close()


# --- running Python functions inside a namespace --------------------------------------------


def _python_call_argv(func: Callable[..., Any]) -> list[str]:
    """argv that imports `func`'s module in a fresh interpreter and calls it (see `_child`)."""
    module = inspect.getmodule(func)
    if module is None or func.__qualname__ != func.__name__:
        raise ValueError(f"{func!r} must be a module-level function")
    path = str(Path(inspect.getfile(func)).resolve().parent)
    modname = module.__name__ if module.__name__ != "__main__" else Path(inspect.getfile(func)).stem
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path[:0] = [{here!r}, {path!r}]; import netns; netns._child({modname!r}, {func.__name__!r})"
    )
    return [sys.executable, "-c", code]


def _child(modname: str, funcname: str) -> None:
    """In the child: arguments from argv[1] (spawn) or stdin (call); the result as JSON on stdout."""
    blob = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    params = json.loads(blob)
    func = getattr(importlib.import_module(modname), funcname)
    result = func(*params["args"], **params["kwargs"])
    print(json.dumps({"result": result}), flush=True)


# --- traffic: a bounded UDP multicast sender, a counting receiver, an IGMP sniffer -------------


def send_udp(group: str, port: int, count: int, *, ttl: int = 8, interval: float = 0.01, source: str | None = None,
             ifname: str | None = None, payload_size: int = 32) -> int:  # fmt: skip
    """Send `count` datagrams to (group, port) with TTL `ttl` (> 1, so a router forwards them).

    `source` binds the sending address; `ifname` picks the outgoing
    interface (else the 224.0.0.0/4 route).  Each payload starts with its
    sequence number.  Returns the number sent.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        if ifname is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            mreqn = struct.pack("=4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton("0.0.0.0"),
                                socket.if_nametoindex(ifname))  # fmt: skip
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        if source is not None:
            sock.bind((source, 0))
        for seq in range(count):
            payload = struct.pack("!I", seq) + b"m" * max(0, payload_size - 4)
            sock.sendto(payload, (group, port))
            if interval > 0 and seq + 1 < count:
                time.sleep(interval)
    finally:
        sock.close()
    return count


def receive(group: str, port: int, *, source: str | None = None, ifname: str | None = None) -> None:
    """Join (`source`, `group`) or (*, `group`) and print one JSON line per datagram, until killed.

    `ifname` is the interface to join on (default: the namespace's only one besides lo).

    Prints ``{"event": "joined"}`` once the membership is in place, and
    ``{"event": "left"}`` after SIGUSR1 drops it (it keeps counting, so a
    test can check nothing more arrives).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    ifname = ifname or _only_interface()
    if source is None:
        mreq = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), socket.if_nametoindex(ifname))  # ip_mreqn
        join, drop = socket.IP_ADD_MEMBERSHIP, socket.IP_DROP_MEMBERSHIP
    else:
        if_addr = socket.inet_aton(_first_ipv4(ifname))
        mreq = socket.inet_aton(group) + if_addr + socket.inet_aton(source)  # struct ip_mreq_source
        join, drop = IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP
    sock.setsockopt(socket.IPPROTO_IP, join, mreq)
    sock.settimeout(0.05)
    leave_asked = left = False

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal leave_asked
        leave_asked = True  # acted on by the loop: no I/O inside a signal handler

    signal.signal(signal.SIGUSR1, on_usr1)
    print(json.dumps({"event": "joined", "group": group, "source": source}), flush=True)
    while True:
        if leave_asked and not left:
            sock.setsockopt(socket.IPPROTO_IP, drop, mreq)
            left = True
            print(json.dumps({"event": "left"}), flush=True)
        try:
            data, (src, _port) = sock.recvfrom(65535)
        except (TimeoutError, InterruptedError):
            continue
        seq = struct.unpack("!I", data[:4])[0] if len(data) >= 4 else None
        print(json.dumps({"event": "packet", "src": src, "len": len(data), "seq": seq}), flush=True)


def sniff_igmp(ifname: str, outgoing: bool = True) -> None:
    """Print one JSON line with the hex of each IGMP datagram on `ifname` (IP header included), until killed:
    arriving ones and, if `outgoing`, leaving ones (a packet socket sees them all, also to groups not joined)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        data, address = sock.recvfrom(65535)
        direction_wanted = outgoing or address[2] != socket.PACKET_OUTGOING
        if address[1] == ETH_P_IP and direction_wanted and len(data) >= 20 and data[9] == IPPROTO_IGMP:
            print(json.dumps({"event": "igmp", "hex": data.hex()}), flush=True)


def seen(sniffer: NsProcess) -> list[tuple[packet.IPv4Header, packet.Message]]:
    """Every IGMP datagram a `sniff_igmp` process recorded so far, parsed (MalformedPacket fails the test)."""
    out = []
    for line in sniffer.log().splitlines():
        if line.startswith('{"event": "igmp"'):
            header, payload = packet.parse_ipv4(bytes.fromhex(json.loads(line)["hex"]))
            out.append((header, packet.parse(payload)))
    return out


def _only_interface() -> str:
    """The namespace's one interface besides lo (receivers on hosts with one link need not name it)."""
    names = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    if len(names) != 1:
        raise ValueError(f"several interfaces here ({', '.join(names)}): say which one to join on (ifname)")
    return names[0]


def _first_ipv4(ifname: str) -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", ifname], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    raise ValueError(f"{ifname} has no IPv4 address")

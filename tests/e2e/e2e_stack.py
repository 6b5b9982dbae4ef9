"""One router running the whole stack (`mgm up`: manager, igmp, Linux forwarder) between namespaces.

The forwarder runs the backend the test asks for (`build(..., backend=)`,
"mrt" or "nft"), and the kernel's side is read through `KernelView`.

    snd (eth0: S1, S2) --- r1 [rtr] r2 --- eth0 h1
                                    r3 --- eth0 h2
                                    r4 --- eth0 h3   (and so on: one host per receiver)

The end-to-end tests and bench/join_latency.py build it with `build`; the
router's configuration is generated (`router_config`) with small IGMP
intervals, so a leave ends forwarding in a fraction of a second, and a
short forwarder counter period, so kernel counters reach the manager soon.
The manager's endpoints are ipc files in the topology's work directory
(the file system is shared by every namespace).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kernel_view import KernelView
from mgm_testplugins.processes import MGM, toml_config
from netns import Namespace, NsProcess, Receiver, Topology, wait_until

IGMP_PROTOCOL_ID = 10
FORWARDER_PROTOCOL_ID = 65001
S1, S2 = "10.90.1.2", "10.90.1.3"
ROUTER_UP = "10.90.1.1"
IGMP_FAST = {
    # The query interval stays at its default (125 s, so a membership would last 251 s without a
    # leave): forwarding that stops within seconds of a leave was stopped by the last member queries.
    "query_response_interval": 1,
    "last_member_query_interval": 0.2,
    "last_member_query_count": 2,
}
START_WAIT = 30.0
WAIT = 10.0


def router_config(workdir: str, interfaces: list[str], *, igmp: dict[str, Any] | None = None,
                  forwarder: dict[str, Any] | None = None, log_level: str = "debug") -> str:  # fmt: skip
    manager = {"api": f"ipc://{workdir}/api", "events": f"ipc://{workdir}/events", "log_level": log_level}
    plugins = {
        "igmp": {"interfaces": interfaces, **IGMP_FAST, **(igmp or {})},
        "forwarder": {"counters_interval": 0.2, **(forwarder or {})},
    }
    return str(toml_config(plugins, manager))


@dataclass
class Stack:
    topology: Topology
    sender: Namespace
    router: Namespace
    hosts: list[Namespace]
    up: NsProcess
    api: str
    kernel: KernelView
    router_ifs: list[str] = field(default_factory=list)

    # --- the manager, as an operator sees it ---------------------------------------------------

    def show(self, table: str, *options: str) -> list[dict[str, Any]]:
        """``mgm show TABLE --json`` run in the router namespace: its entries."""
        out = self.router.run(*MGM, "show", table, "--json", "--api", self.api, *options).stdout
        entries: list[dict[str, Any]] = json.loads(out)["entries"]
        return entries

    def mfe(self, source: str, group: str, *options: str) -> dict[str, Any] | None:
        return next((m for m in self.show("mfes", *options) if (m["source"], m["group"]) == (source, group)), None)

    def oil(self, source: str, group: str) -> set[str] | None:
        """Names of the outgoing interfaces of the manager's MFE (S,G); None without one."""
        mfe = self.mfe(source, group)
        if mfe is None:
            return None
        names = self.if_names()
        return {names[o["if_index"]] for o in mfe["oil"]}

    def if_names(self) -> dict[int, str]:
        return {self.router.if_index(name): name for name in self.router_ifs}

    # --- the kernel ------------------------------------------------------------------------------

    def kernel_oil(self, source: str, group: str) -> set[str] | None:
        """Names of the outgoing interfaces of the kernel's entry (S,G); None without one."""
        return self.kernel.oil(source, group)

    # --- hosts -------------------------------------------------------------------------------------

    def receiver(self, host: int, group: str, port: int, source: str | None = None) -> Receiver:
        rx = self.hosts[host].receiver(group, port, source=source, name=f"h{host + 1}-{group}-{source or 'any'}")
        rx.wait_joined()
        return rx

    def alive(self) -> None:
        assert self.up.alive(), f"mgm up exited:\n{self.up.log()}"


def build(topology: Topology, receivers: int = 2, *, backend: str, igmp: dict[str, Any] | None = None,
          forwarder: dict[str, Any] | None = None, log_level: str = "debug") -> Stack:  # fmt: skip
    """The topology above with `receivers` hosts, `mgm up` running, IGMP querying and every interface installed
    in the kernel by the forwarder's `backend`."""
    sender, router = topology.namespaces("snd", "rtr")
    up_link = topology.link(sender, router, f"{S1}/24", f"{ROUTER_UP}/24")
    sender.ip("addr", "add", f"{S2}/24", "dev", up_link.a_if)
    sender.multicast_route(up_link.a_if)
    hosts = []
    for n in range(receivers):
        host = topology.namespace(f"h{n + 1}")
        topology.link(router, host, f"10.90.{n + 2}.1/24", f"10.90.{n + 2}.2/24")
        host.multicast_route("eth0")
        hosts.append(host)
    router_ifs = [f"r{n + 1}" for n in range(receivers + 1)]
    workdir = str(topology.workdir)
    config = topology.workdir / "router.toml"
    forwarder = {"backend": backend, **(forwarder or {})}
    config.write_text(router_config(workdir, router_ifs, igmp=igmp, forwarder=forwarder, log_level=log_level))
    up = router.popen([*MGM, "up", "--config", str(config)], "mgm-up")
    stack = Stack(topology, sender, router, hosts, up, f"ipc://{workdir}/api", KernelView(router, backend), router_ifs)

    def ready() -> bool:
        stack.alive()
        return stack.kernel.interfaces() == set(router_ifs) and up.log().count("igmp: running IGMPv") >= len(router_ifs)

    wait_until(ready, START_WAIT, f"mgm up: igmp running and every router interface installed ({backend})")
    return stack

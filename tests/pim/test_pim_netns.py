"""The pim plugin for real: `mgm plugin pim` in a router namespace, PIM peers on the same bridged link.

The peers are small programs of this test (`peer`): they send Hellos with
the options they are given from a raw PIM socket, and print every PIM
message they hear decoded by scapy, an implementation independent of ours.
This needs no multicast routing socket, so it runs on every kernel; the
interop tests put FRR's pimd in the peers' place.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mgm_testplugins.processes import ManagerProc, toml_config
from netns import Node, NsProcess, Topology, segment, send_udp, wait_until

from mgm.plugins.pim.packet import Assert, EncodedGroup, RegisterStop
from mgm.plugins.pim.plugin import PIM_PROTOCOL_ID
from mgm.plugins.testing import scaled

pytestmark = pytest.mark.netns

SUBNET = "10.78.0"
WAIT = 15.0
FAST = {"hello_period": 1, "triggered_hello_delay": 0.2}
PIM_PROTOCOL = 103


def peer(ifname: str, address: str, options: dict[str, Any], goodbye_after: float | None = None,
         outbox: str | None = None) -> None:
    """Hello every second with `options` (a holdtime 0 goodbye after `goodbye_after` s); print what is heard.
    Each file that appears in the folder `outbox` holds a PIM message in hex: it is sent once, to ALL-PIM-ROUTERS,
    or to the address before the hex."""
    from scapy.contrib.pim import PIMv2Hdr, PIMv2Hello, PIMv2JoinPrune

    from mgm.plugins.pim.packet import Hello, build

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, PIM_PROTOCOL)
    index = socket.if_nametoindex(ifname)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    mreqn = socket.inet_aton("224.0.0.13") + socket.inet_aton("0.0.0.0") + struct.pack("@i", index)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    sock.settimeout(0.1)
    started = next_hello = time.monotonic()
    sent: set[str] = set()
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        now = time.monotonic()
        for message in sorted(Path(outbox).iterdir()) if outbox else ():
            if message.name not in sent and not message.name.startswith("."):
                sent.add(message.name)
                *to, text = message.read_text().split()  # "HEX", or "ADDRESS HEX" for a unicast message
                sock.sendto(bytes.fromhex(text), (to[0] if to else "224.0.0.13", 0))
                print(json.dumps({"event": "sent", "name": message.name}), flush=True)
        if now >= next_hello:
            holdtime = 0 if goodbye_after is not None and now - started >= goodbye_after else options["holdtime"]
            sock.sendto(build(Hello(**{**options, "holdtime": holdtime})), ("224.0.0.13", 0))
            next_hello = now + 1.0
        try:
            data, (source, _) = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if source == address:
            continue
        pim = PIMv2Hdr(data[(data[0] & 0x0F) * 4 :])
        entry: dict[str, Any] = {"event": "pim", "source": source, "type": pim.type, "ttl": data[8]}
        if pim.type == 0:
            for option in pim[PIMv2Hello].option:
                for name in ("holdtime", "dr_priority", "generation_id"):
                    if hasattr(option, name):
                        entry[name] = getattr(option, name)
        elif pim.type == 1:  # Register, read by hand (4.9.3): flags, then the packet (an IP header alone if null)
            body = bytes(pim)[4:]
            inner = body[4:]
            entry.update(null=bool(body[0] & 0x40), inner=[socket.inet_ntoa(inner[12:16]),
                         socket.inet_ntoa(inner[16:20]), len(inner)])  # fmt: skip
        elif pim.type == 2:  # Register-Stop, read by hand (4.9.4): encoded group, then encoded unicast source
            body = bytes(pim)[4:]
            entry.update(group=socket.inet_ntoa(body[4:8]), registered=socket.inet_ntoa(body[10:14]))
        elif pim.type == 5:  # Assert, read by hand (4.9.6): group, source, R bit and preference, metric
            body = bytes(pim)[4:]
            word = int.from_bytes(body[14:18], "big")
            entry.update(group=socket.inet_ntoa(body[4:8]), asserted=socket.inet_ntoa(body[10:14]), rpt=word >> 31,
                         preference=word & 0x7FFFFFFF, metric=int.from_bytes(body[18:22], "big"))  # fmt: skip
        elif pim.type == 3:
            jp = pim[PIMv2JoinPrune]
            entry.update(upstream=jp.up_neighbor_ip, holdtime=jp.holdtime, groups={
                g.gaddr: {kind: [[a.src_ip, a.wildcard, a.rpt] for a in addrs]
                          for kind, addrs in (("joins", g.join_ips), ("prunes", g.prune_ips))}
                for g in jp.jp_ips})  # fmt: skip
        print(json.dumps(entry), flush=True)


def start_pim(node: Node, manager: ManagerProc, workdir: Path, **table: Any) -> NsProcess:
    config = workdir / f"pim-{node.ns.role}.toml"
    config.write_text(toml_config({"pim": {"interfaces": [node.ifname], **FAST, **table}}))
    proc = node.ns.mgm("plugin", "pim", "--config", str(config), "--api", manager.api, "--events", manager.events,
                       "--log-level", "debug", name=f"pim-{node.ns.role}")  # fmt: skip
    wait_until(lambda: "pim: running on" in proc.log() or not proc.alive(), WAIT, "the pim plugin to start")
    assert proc.alive(), proc.log()
    return proc


def start_peer(node: Node, **options: Any) -> NsProcess:
    goodbye_after = options.pop("goodbye_after", None)
    hello = {"holdtime": 5, "dr_priority": 1, "generation_id": 0x1000 + int(node.address.rsplit(".", 1)[1]),
             **options}  # fmt: skip
    proc = node.ns.spawn(peer, node.ifname, node.address, hello, goodbye_after, name=f"peer-{node.ns.role}")
    wait_until(lambda: '"ready"' in proc.log(), WAIT, "the peer to start")
    return proc


def heard(proc: NsProcess, source: str) -> list[dict[str, Any]]:
    return [e for line in proc.log().splitlines() if line.startswith("{")
            if (e := json.loads(line)).get("event") == "pim" and e["source"] == source]  # fmt: skip


def test_hellos_make_neighbours_both_ways_and_the_highest_address_is_dr(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=1, p2=2, p3=3)
    router = nodes["rtr"]
    pim = start_pim(router, manager, ipc_dir)
    peers = [start_peer(nodes["p2"]), start_peer(nodes["p3"])]
    for proc in peers:
        wait_until(lambda proc=proc: heard(proc, router.address), WAIT, "our Hello at the peer")
    hello = heard(peers[0], router.address)[0]
    assert (hello["type"], hello["ttl"], hello["holdtime"], hello["dr_priority"]) == (0, 1, 4, 1)  # 3.5 x 1 s
    for address in (f"{SUBNET}.2", f"{SUBNET}.3"):
        wait_until(lambda a=address: f"neighbour {a} up" in pim.log(), WAIT, f"neighbour {address} up")
    wait_until(lambda: f"the DR is now {SUBNET}.3" in pim.log(), WAIT, "the highest address to be DR")


def test_the_highest_priority_wins_and_a_goodbye_ends_a_neighbour_at_once(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=1, p2=2)
    pim = start_pim(nodes["rtr"], manager, ipc_dir, dr_priority=5)
    start_peer(nodes["p2"], dr_priority=10, holdtime=60, goodbye_after=3.0)
    wait_until(lambda: f"the DR is now {SUBNET}.2" in pim.log(), WAIT, "the priority 10 peer to be DR")
    wait_until(lambda: f"neighbour {SUBNET}.2 down (goodbye)" in pim.log(), WAIT, "the goodbye to end it")
    assert re.search(rf"the DR is now {SUBNET}\.1 \(us\)", pim.log()), pim.log()


def test_a_stopping_plugin_says_goodbye(manager: ManagerProc, ipc_dir: Path, topology: Topology) -> None:
    nodes = segment(topology, SUBNET, rtr=1, p2=2)
    router = nodes["rtr"]
    pim = start_pim(router, manager, ipc_dir, dr_priority=3)
    watcher = start_peer(nodes["p2"])
    wait_until(lambda: heard(watcher, router.address), WAIT, "our Hello at the peer")
    assert heard(watcher, router.address)[0]["dr_priority"] == 3
    pim.popen.send_signal(signal.SIGTERM)
    wait_until(lambda: any(e["holdtime"] == 0 for e in heard(watcher, router.address)), WAIT, "our goodbye")
    pim.popen.wait(timeout=WAIT)
    assert "counters:" in pim.log() and "hello_sent" in pim.log(), pim.log()


@pytest.mark.parametrize("pim_after_receiver", [False, True], ids=["pim-first", "pim-after-the-receiver"])
def test_receivers_make_a_star_g_join_towards_the_rp_and_their_leave_a_prune(
    manager: ManagerProc, ipc_dir: Path, topology: Topology, pim_after_receiver: bool
) -> None:
    """Last-hop router: a host behind IGMP joins G; PIM joins (*,G) towards the RP (the peer), refreshes it,
    and prunes it after the leave.  The peer decodes every Join/Prune with scapy.  A PIM that starts after
    the receiver (a restart) missed the manager's join alert: it finds the group by enumeration."""
    rtr, rp_ns, host_ns = topology.namespaces("rtr", "rp", "host")
    up = topology.link(rtr, rp_ns, f"{SUBNET}.1/24", f"{SUBNET}.2/24")
    down = topology.link(rtr, host_ns, "10.79.0.1/24", "10.79.0.2/24")
    host_ns.multicast_route(down.b_if)
    group, rp = "239.78.9.9", f"{SUBNET}.2"
    config = ipc_dir / "igmp.toml"
    fast_leave = {"query_response_interval": 0.5, "last_member_query_interval": 0.2, "last_member_query_count": 2}
    config.write_text(toml_config({"igmp": {"interfaces": [down.a_if], **fast_leave}}))
    igmp = rtr.mgm("plugin", "igmp", "--config", str(config), "--api", manager.api, "--events", manager.events,
                   name="igmp")  # fmt: skip
    wait_until(lambda: "igmp: running IGMPv" in igmp.log() or not igmp.alive(), WAIT, "the igmp plugin")
    if pim_after_receiver:
        receiver = host_ns.receiver(group, 5099)
        receiver.wait_joined()
        wait_until(lambda: group in json.dumps(manager.request("sync", {"stream": "state"})["state"]["memberships"]),
                   WAIT, "IGMP's membership in the manager")  # fmt: skip
    pim = start_pim(Node(rtr, up.a_if, f"{SUBNET}.1"), manager, ipc_dir, join_prune_interval=1,
                    rp=[{"address": rp, "groups": ["239.78.0.0/16"]}])  # fmt: skip
    peer_proc = start_peer(Node(rp_ns, up.b_if, rp))
    if not pim_after_receiver:
        receiver = host_ns.receiver(group, 5099)

    def joins_and_prunes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        messages = [e for e in heard(peer_proc, f"{SUBNET}.1") if e["type"] == 3 and group in e["groups"]]
        return ([m for m in messages if m["groups"][group]["joins"]],
                [m for m in messages if m["groups"][group]["prunes"]])  # fmt: skip

    receiver.wait_joined()
    wait_until(lambda: len(joins_and_prunes()[0]) >= 2, WAIT, "a (*,G) join and its periodic refresh at the RP")
    join = joins_and_prunes()[0][0]
    assert (join["upstream"], join["holdtime"], join["ttl"]) == (rp, 4, 1)  # 3.5 x 1 s
    assert join["groups"][group] == {"joins": [[rp, 1, 1]], "prunes": []}  # the RP, wildcard and RPT bits
    shown = wait_until(lambda: shown_upstream(manager, group), WAIT, "the join in `mgm show pim --json`")
    assert [(n["interface"], n["address"]) for n in shown["neighbors"]] == [(up.a_if, rp)]
    assert shown["rp"] == [{"groups": "239.78.0.0/16", "rp": rp}]
    assert shown["metrics"]["neighbors"] == 1 and shown["metrics"]["join_prune_sent"] >= 1
    text = show(manager, "pim").stdout
    assert all(words in text for words in ("neighbours", "upstream join state", rp, group)), text
    found = re.findall(r"pim: (\d+) joined \(source, group\) pair\(s\) of other protocols found at start", pim.log())
    assert found == ["1" if pim_after_receiver else "0"], pim.log()
    receiver.leave()
    wait_until(lambda: joins_and_prunes()[1], WAIT, "the (*,G) prune after the leave")
    assert joins_and_prunes()[1][0]["groups"][group] == {"joins": [], "prunes": [[rp, 1, 1]]}


def show(manager: ManagerProc | SimpleNamespace, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mgm.core.cli", "show", *args, "--api", manager.api, "--events",
                           manager.events], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def shown_upstream(manager: ManagerProc, group: str) -> dict[str, Any] | None:
    """The pim plugin's status from `mgm show pim --json`, once it lists (*,group) joined for an alert."""
    (entry,) = json.loads(show(manager, "pim", "--json").stdout)["entries"]
    upstream = [(u["source"], u["group"], u["why"], u["neighbor"]) for u in entry["status"]["upstream"]]
    joined = ("*", group, ["alert"], entry["status"]["rp"][0]["rp"]) in upstream
    return dict(entry["status"]) if joined else None


def test_config_mistakes_are_all_named_before_the_plugin_registers(ipc_dir: Path) -> None:
    config = ipc_dir / "pim.toml"
    config.write_text(toml_config({"pim": {"interfaces": ["lo"], "hello_period": 0, "dr_priority": -1,
                                           "colour": "red"}}))  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "mgm.core.cli", "plugin", "pim", "--config", str(config),
                           "--api", f"ipc://{ipc_dir}/none"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    for key in ("hello_period", "dr_priority", "colour"):
        assert f"plugins.pim.{key}" in done.stderr, done.stderr


def join_prune(upstream: str, group: str, *, joins: tuple[str, ...] = (), prunes: tuple[str, ...] = (),
               rp: str | None = None, holdtime: int = 60) -> str:  # fmt: skip
    """A Join/Prune built by scapy, in hex: (*,G) towards `rp` (wildcard and RPT bits) when `rp` is given, or
    (S,G) for each source in `joins` and `prunes`."""
    from scapy.contrib.pim import PIMv2GroupAddrs, PIMv2Hdr, PIMv2JoinAddrs, PIMv2JoinPrune, PIMv2PruneAddrs

    def entries(kind: Any, sources: tuple[str, ...]) -> list[Any]:
        if rp is not None and sources:
            return [kind(src_ip=rp, sparse=1, wildcard=1, rpt=1)]
        return [kind(src_ip=source, sparse=1, wildcard=0, rpt=0) for source in sources]

    from scapy.utils import checksum

    body = PIMv2JoinPrune(up_neighbor_ip=upstream, holdtime=holdtime, jp_ips=[
        PIMv2GroupAddrs(gaddr=group, join_ips=entries(PIMv2JoinAddrs, joins),
                        prune_ips=entries(PIMv2PruneAddrs, prunes))])  # fmt: skip
    unsummed = bytes(PIMv2Hdr(type=3, chksum=0) / body)  # scapy sums only under an IP layer
    return bytes(PIMv2Hdr(type=3, chksum=checksum(unsummed)) / body).hex()


def pim_memberships(manager: ManagerProc) -> set[tuple[str, str, int]]:
    """(source, group, if_index) of the pim plugin's memberships, from the manager's state snapshot."""
    state = manager.request("sync", {"stream": "state"})["state"]
    return {(m["source"], m["group"], m["if_index"]) for m in state["memberships"]
            if m["protocol_id"] == PIM_PROTOCOL_ID}  # fmt: skip


def post(outbox: Path, name: str, message: str) -> None:
    (outbox / f".{name}").write_text(message)
    (outbox / f".{name}").rename(outbox / name)  # whole, or not at all, when the peer looks


def test_a_downstream_join_is_joined_upstream_and_its_prune_pruned(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    """Upstream router: a neighbour's (*,G) Join addressed to us on one interface becomes our (*,G) Join
    towards the RP on the other, and the manager's membership there; its Prune undoes both."""
    rtr, rp_ns, lhr_ns = topology.namespaces("rtr", "rp", "lhr")
    up = topology.link(rtr, rp_ns, f"{SUBNET}.1/24", f"{SUBNET}.2/24")
    down = topology.link(rtr, lhr_ns, "10.79.0.1/24", "10.79.0.2/24")
    group, rp = "239.78.7.7", f"{SUBNET}.2"
    config = ipc_dir / "pim.toml"
    config.write_text(toml_config({"pim": {"interfaces": [up.a_if, down.a_if], **FAST, "join_prune_interval": 30,
                                           "rp": [{"address": rp, "groups": ["239.78.0.0/16"]}]}}))  # fmt: skip
    pim = rtr.mgm("plugin", "pim", "--config", str(config), "--api", manager.api, "--events", manager.events,
                  "--log-level", "debug", name="pim-rtr")  # fmt: skip
    wait_until(lambda: "pim: running on" in pim.log() or not pim.alive(), WAIT, "the pim plugin to start")
    rp_peer = start_peer(Node(rp_ns, up.b_if, rp))
    outbox = ipc_dir / "outbox"
    outbox.mkdir()
    lhr_peer = lhr_ns.spawn(peer, down.b_if, "10.79.0.2", {"holdtime": 5, "dr_priority": 1, "generation_id": 7},
                            None, str(outbox), name="peer-lhr")  # fmt: skip
    wait_until(lambda: "neighbour 10.79.0.2 up" in pim.log() and f"neighbour {rp} up" in pim.log(), WAIT,
               "both neighbours up")  # fmt: skip

    def at_rp(kind: str) -> list[dict[str, Any]]:
        return [e for e in heard(rp_peer, f"{SUBNET}.1") if e["type"] == 3 and e["groups"].get(group, {}).get(kind)]

    post(outbox, "1-join", join_prune("10.79.0.1", group, joins=("*",), rp=rp))
    wait_until(lambda: at_rp("joins"), WAIT, "our (*,G) join at the RP")
    assert at_rp("joins")[0]["groups"][group]["joins"] == [[rp, 1, 1]]
    assert pim_memberships(manager) == {("0.0.0.0", group, rtr.if_index(down.a_if))}
    assert lhr_peer.alive(), lhr_peer.log()

    post(outbox, "2-prune", join_prune("10.79.0.1", group, prunes=("*",), rp=rp))
    wait_until(lambda: at_rp("prunes"), WAIT, "our (*,G) prune at the RP")
    wait_until(lambda: not pim_memberships(manager), WAIT, "the membership to go")


def test_as_rp_a_downstream_join_makes_us_forward_down_that_link_until_its_prune(
    topology: Topology, forwarder_backend: str
) -> None:
    """mgmbus is the RP, and the source is on one of its links: a (*,G) Join from the router behind the
    other link (a scapy peer here) is our membership there, so `mgm up`'s forwarder sends the flow down that
    link; the Prune stops it."""
    src_ns, rtr, lhr_ns = topology.namespaces("src", "rtr", "lhr")
    up = topology.link(src_ns, rtr, "10.82.1.2/24", "10.82.1.1/24")
    down = topology.link(rtr, lhr_ns, "10.82.2.1/24", "10.82.2.2/24")
    src_ns.multicast_route(up.a_if)
    group, port, rp = "239.82.1.1", 5821, "10.82.1.1"
    work = topology.workdir
    (work / "router.toml").write_text(f"""\
[manager]
api = "ipc://{work}/api"
events = "ipc://{work}/events"

[plugins.forwarder]
backend = "{forwarder_backend}"

[plugins.pim]
interfaces = ["{up.b_if}", "{down.a_if}"]
hello_period = 1
triggered_hello_delay = 0.2
rp = [{{ address = "{rp}", groups = ["239.82.0.0/16"] }}]
""")
    mgm_up = rtr.popen([sys.executable, "-m", "mgm.core.cli", "up", "--config", str(work / "router.toml")], "mgm-up")
    outbox = work / "outbox"
    outbox.mkdir()
    lhr_ns.spawn(peer, down.b_if, "10.82.2.2", {"holdtime": 5, "dr_priority": 1, "generation_id": 9}, None,
                 str(outbox), name="peer-lhr")  # fmt: skip
    wait_until(lambda: "neighbour 10.82.2.2 up" in mgm_up.log() or not mgm_up.alive(), WAIT * 2, "the neighbour")
    receiver = lhr_ns.receiver(group, port)
    receiver.wait_joined()
    src_ns.spawn(send_udp, group, port, 100000, interval=0.02, source="10.82.1.2", name="sender")
    time.sleep(0.5)
    assert receiver.count() == 0, "forwarded before anyone joined"
    post(outbox, "1-join", join_prune("10.82.2.1", group, joins=("*",), rp=rp))
    receiver.wait_count(20, timeout=WAIT)
    post(outbox, "2-prune", join_prune("10.82.2.1", group, prunes=("*",), rp=rp))
    wait_until(lambda: "(*,239.82.1.1) pruned downstream" in mgm_up.log(), WAIT, "the prune to be taken")
    time.sleep(0.5)  # what the forwarder had in flight
    stopped_at = receiver.count()
    time.sleep(1.0)  # 50 datagrams at the sender's pace
    assert receiver.count() == stopped_at, "still forwarded after the prune"
    assert mgm_up.alive(), mgm_up.log()


def packet_hex(message: Any) -> str:
    from mgm.plugins.pim.packet import build

    return build(message).hex()


def register(source: str, group: str, *, null: bool = False) -> str:
    """A Register of one UDP datagram from `source` to `group` (a null-Register: its IP header alone), in hex."""
    from scapy.layers.inet import IP, UDP

    from mgm.plugins.pim.packet import Register, build

    inner = IP(src=source, dst=group, ttl=16)
    whole = bytes(inner if null else inner / UDP(dport=5831) / b"x")
    return build(Register(border=False, null=null, packet=whole)).hex()


def test_as_rp_a_register_is_stopped_without_receivers_and_joined_towards_the_source_with_them(
    topology: Topology, forwarder_backend: str
) -> None:
    """The RP's side of Register: the DR (a scapy peer that is the source too) registers (S,G) by unicast.
    No receivers: Register-Stop at once.  Receivers (a host behind IGMP, another protocol's interface): the
    datagram inside reaches the host, our (S,G) join goes towards S and no Register-Stop, until S's packets
    arrive natively and reach the host; then the (null-)Registers are stopped."""
    dr_ns, rtr, host = topology.namespaces("dr", "rtr", "host")
    up = topology.link(dr_ns, rtr, "10.83.1.2/24", "10.83.1.1/24")
    down = topology.link(rtr, host, "10.83.2.1/24", "10.83.2.2/24")
    dr_ns.multicast_route(up.a_if)
    host.multicast_route(down.b_if)
    source, group, rp = "10.83.1.2", "239.83.1.1", "10.83.1.1"
    up_proc = rtr.mgm_up(toml_config({
        "igmp": {"interfaces": [down.a_if], "query_response_interval": 1},
        "pim": {"interfaces": [up.b_if], **FAST, "rp": [{"address": rp, "groups": ["239.83.0.0/16"]}]},
    }), backend=forwarder_backend)  # fmt: skip
    outbox = topology.workdir / "outbox"
    outbox.mkdir()
    dr = dr_ns.spawn(peer, up.a_if, source, {"holdtime": 5, "dr_priority": 1, "generation_id": 7}, None,
                     str(outbox), name="peer-dr")  # fmt: skip
    wait_until(lambda: f"neighbour {source} up" in up_proc.log() or not up_proc.alive(), WAIT * 2, "the DR's Hello")

    def stops() -> list[dict[str, Any]]:
        return [e for e in heard(dr, rp) if e["type"] == 2]

    def sg_joins() -> list[dict[str, Any]]:
        return [e for e in heard(dr, rp) if e["type"] == 3 and [source, 0, 0] in e["groups"].get(group, {}).get(
            "joins", [])]

    post(outbox, "1-register", f"{rp} {register(source, group)}")
    wait_until(stops, WAIT, "a Register-Stop: we have no receivers")
    assert stops() == [{"event": "pim", "source": rp, "type": 2, "ttl": stops()[0]["ttl"], "group": group,
                        "registered": source}]  # fmt: skip

    receiver = host.receiver(group, 5831)
    receiver.wait_joined()
    wait_until(lambda: f"(*,{group}) wanted (alert)" in up_proc.log(), WAIT, "IGMP's receiver at the RP")
    post(outbox, "2-register", f"{rp} {register(source, group)}")
    wait_until(sg_joins, WAIT, "our (S,G) join towards the source")
    receiver.wait_count(1, WAIT)  # the datagram the Register carried, forwarded by the RP
    assert len(stops()) == 1, "stopped although the source's packets do not come natively yet"

    dr_ns.spawn(send_udp, group, 5831, 100_000, interval=0.02, source=source, name="native")
    receiver.wait_count(10, WAIT)
    # as a DR does, a Register (here a null one) every second until the Register-Stop, which comes once the
    # packet count the forwarder reports (every 5 s by default) shows the native flow
    deadline = time.monotonic() + scaled(WAIT)
    for n in itertools.count():
        if len(stops()) == 2:
            break
        assert time.monotonic() < deadline, "no Register-Stop although the packets come natively"
        post(outbox, f"3-null-register-{n:03}", f"{rp} {register(source, group, null=True)}")
        time.sleep(1.0)


def test_as_dr_a_sources_packets_go_to_the_rp_in_registers_until_its_register_stop_then_a_null_register_probes(
    topology: Topology, forwarder_backend: str
) -> None:
    """The DR's side of Register (4.4.1): a source on our link, the RP (a scapy peer) behind the other.  Its
    packets reach the RP whole inside Registers; the RP's Register-Stop ends them; when the Register-Stop
    timer ends a null-Register probes, and with no Register-Stop in reply the Registers resume."""
    src_ns, rtr, rp_ns = topology.namespaces("src", "rtr", "rp")
    lan = topology.link(src_ns, rtr, "10.84.1.2/24", "10.84.1.1/24")
    transit = topology.link(rtr, rp_ns, "10.84.2.1/24", "10.84.2.2/24")
    src_ns.multicast_route(lan.a_if)
    source, group, rp = "10.84.1.2", "239.84.1.1", "10.84.2.2"
    up_proc = rtr.mgm_up(toml_config({"pim": {
        "interfaces": [lan.b_if, transit.a_if], **FAST, "rp": [{"address": rp, "groups": ["239.84.0.0/16"]}],
        "register_suppression_time": 4, "register_probe_time": 1}}), backend=forwarder_backend)  # fmt: skip
    outbox = topology.workdir / "outbox"
    outbox.mkdir()
    rp_peer = rp_ns.spawn(peer, transit.b_if, rp, {"holdtime": 5, "dr_priority": 1, "generation_id": 8}, None,
                          str(outbox), name="peer-rp")  # fmt: skip
    wait_until(lambda: f"neighbour {rp} up" in up_proc.log() or not up_proc.alive(), WAIT * 2, "the RP's Hello")
    src_ns.spawn(send_udp, group, 5841, 100_000, interval=0.02, source=source, name="sender")

    def registers() -> list[dict[str, Any]]:
        return [e for e in heard(rp_peer, "10.84.2.1") if e["type"] == 1]

    wait_until(lambda: len(registers()) >= 5, WAIT, "Registers with the source's packets at the RP")
    first = registers()[0]
    assert (first["null"], first["inner"][:2]) == (False, [source, group]), first
    assert first["inner"][2] > 28, "the whole datagram, not a header"
    post(outbox, "1-register-stop", f"10.84.2.1 {packet_hex(RegisterStop(EncodedGroup(group), source))}")
    wait_until(lambda: any(e["null"] for e in registers()), WAIT, "a null-Register when the Register-Stop timer ends")
    log = [json.loads(line) for line in rp_peer.log().splitlines() if line.startswith("{")]
    stop_at = next(i for i, e in enumerate(log) if e.get("event") == "sent")
    null_at = next(i for i, e in enumerate(log) if e.get("type") == 1 and e.get("null"))
    assert log[null_at]["inner"] == [source, group, 20]
    between = [e for e in log[stop_at:null_at] if e.get("type") == 1]
    assert len(between) < 10, f"{len(between)} Registers after the Register-Stop (at most those already sent)"
    wait_until(lambda: not registers()[-1]["null"], WAIT, "the Registers to resume: no Register-Stop answered")
    work = topology.workdir
    endpoints = SimpleNamespace(api=f"ipc://{work}/api", events=f"ipc://{work}/events")

    def shown_registers() -> list[dict[str, Any]]:
        return list(json.loads(show(endpoints, "pim", "--json").stdout)["entries"][0]["status"]["registers"])

    wanted = {"source": source, "group": group, "rp": rp, "interface": lan.b_if, "state": "join", "register_stops": 1}
    wait_until(lambda: [{k: r[k] for k in wanted} for r in shown_registers()] == [wanted], WAIT,
               "`mgm show pim` to list the flow registered again after one Register-Stop")  # fmt: skip
    text = show(endpoints, "pim").stdout
    assert "register state" in text and source in text, text
    assert up_proc.alive(), up_proc.log()


def test_assert_we_assert_when_another_router_forwards_onto_our_lan_stop_when_it_wins_and_forward_after_its_cancel(
    topology: Topology, forwarder_backend: str
) -> None:
    """(S,G) Assert (4.6.1) on a LAN where a host behind IGMP wants G: another router (a scapy peer, which also
    sends S's packets onto the LAN) forwards too.  Its packets arrive on an interface of our outgoing list
    (wrong_if): we Assert.  Its Assert with the same metric from a higher address wins: we stop forwarding
    onto the LAN.  Its AssertCancel: we forward again."""
    src_ns, rtr, other, host = topology.namespaces("src", "rtr", "other", "host")
    up = topology.link(src_ns, rtr, "10.85.1.2/24", "10.85.1.1/24")
    ours, theirs, host_link = topology.lan([(rtr, "10.85.0.1/24"), (other, "10.85.0.9/24"), (host, "10.85.0.3/24")])
    src_ns.multicast_route(up.a_if)
    host.multicast_route(host_link.a_if)
    source, group, port = "10.85.1.2", "239.85.1.1", 5851
    up_proc = rtr.mgm_up(toml_config({
        "igmp": {"interfaces": [ours.a_if], "query_response_interval": 1},
        "pim": {"interfaces": [up.b_if, ours.a_if], **FAST},
    }), backend=forwarder_backend)  # fmt: skip
    outbox = topology.workdir / "outbox"
    outbox.mkdir()
    peer_proc = other.spawn(peer, theirs.a_if, "10.85.0.9", {"holdtime": 30, "dr_priority": 1, "generation_id": 5},
                            None, str(outbox), name="peer-other")  # fmt: skip
    wait_until(lambda: "neighbour 10.85.0.9 up" in up_proc.log() or not up_proc.alive(), WAIT * 2, "the neighbour")
    receiver = host.receiver(group, port)
    receiver.wait_joined()
    src_ns.spawn(send_udp, group, port, 100_000, interval=0.02, source=source, name="sender")
    receiver.wait_count(10, WAIT)

    other.ip("addr", "add", f"{source}/32", "dev", theirs.a_if)  # the other router forwards S's packets too
    other.spawn(send_udp, group, port, 25, interval=0.02, source=source, ifname=theirs.a_if, name="other-fwd")

    def asserts() -> list[dict[str, Any]]:
        return [e for e in heard(peer_proc, "10.85.0.1") if e["type"] == 5]

    wait_until(asserts, WAIT, "our Assert when the other router's packets come in on our outgoing interface")
    assert {k: asserts()[0][k] for k in ("group", "asserted", "rpt", "preference", "metric", "ttl")} == {
        "group": group, "asserted": source, "rpt": 0, "preference": 0, "metric": 0, "ttl": 1}

    post(outbox, "1-assert", packet_hex(Assert(EncodedGroup(group), source, False, 0, 0)))  # a tie: its address wins
    wait_until(lambda: "Assert lost to 10.85.0.9" in up_proc.log(), WAIT, "us to lose the Assert")
    time.sleep(1.0)  # what was in flight, and the other router's 25 packets are long sent
    stopped_at = receiver.count()
    time.sleep(1.0)  # 50 of the source's datagrams, had we still forwarded them onto the LAN
    assert receiver.count() == stopped_at, "we still forward onto the LAN after losing the Assert"

    post(outbox, "2-assert-cancel", packet_hex(Assert(EncodedGroup(group), source, True, 0x7FFFFFFF, 0xFFFFFFFF)))
    receiver.wait_count(stopped_at + 20, WAIT)  # the winner cancelled: we forward again
    assert "no Assert loser any more, forwarding" in up_proc.log()
    assert up_proc.alive(), up_proc.log()

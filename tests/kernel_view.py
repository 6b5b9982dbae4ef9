"""What the kernel forwards in a namespace, read the same way whichever forwarder backend installed it.

The forwarding tests run against every backend the kernel offers (the
`forwarder_backend` fixture) and ask the kernel, not the forwarder, what
it does: `/proc/net/ip_mr_*` for MRT, our nftables table for nft (read
inside the namespace with libnftables, as the forwarder writes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netns import Namespace

from mgm.plugins.forwarder.mroute import parse_ip_mr_cache, parse_ip_mr_vif
from mgm.plugins.forwarder.nftables import DEFAULT_TABLE


@dataclass(frozen=True)
class KernelEntry:
    """One forwarding entry as the kernel holds it: interface names, and the packets and bytes it matched."""

    parent: str
    oifs: frozenset[str]
    packets: int
    bytes: int
    wrong_if: int


class KernelView:
    """`entries`, `interfaces` and `out_packets` of one namespace's kernel, for one backend."""

    def __init__(self, ns: Namespace, backend: str, table: str = DEFAULT_TABLE) -> None:
        assert backend in ("mrt", "nft"), backend
        self.ns, self.backend, self.table = ns, backend, table

    def entries(self) -> dict[tuple[str, str], KernelEntry]:
        return {tuple(k): KernelEntry(e[0], frozenset(e[1]), e[2], e[3], e[4])  # type: ignore[misc]
                for k, e in self._read()["entries"]}  # fmt: skip

    def entry(self, source: str, group: str) -> KernelEntry | None:
        return self.entries().get((source, group))

    def oil(self, source: str, group: str) -> set[str] | None:
        entry = self.entry(source, group)
        return None if entry is None else set(entry.oifs)

    def interfaces(self) -> set[str]:
        """The interfaces the forwarder installed (MRT: its VIFs; nft: the table's `ifs` set)."""
        return set(self._read()["interfaces"])

    def out_packets(self) -> dict[str, int]:
        """Packets sent out of each installed interface by forwarding."""
        return dict(self._read()["out"])

    def _read(self) -> dict[str, Any]:
        if self.backend == "mrt":
            vifs = parse_ip_mr_vif(self.ns.run("cat", "/proc/net/ip_mr_vif").stdout)
            names = {v.vif: v.name for v in vifs}
            entries = [((e.source, e.group),
                        (names[e.parent], sorted(names[o] for o in e.oifs), e.packets, e.bytes, e.wrong_if))
                       for e in parse_ip_mr_cache(self.ns.run("cat", "/proc/net/ip_mr_cache").stdout)
                       if e.resolved]  # fmt: skip
            return {"entries": entries, "interfaces": sorted(names.values()),
                    "out": {v.name: v.out_packets for v in vifs}}  # fmt: skip
        result: dict[str, Any] = self.ns.call(read_nft, self.table)
        return result


def read_nft(table: str) -> dict[str, Any]:
    """Run inside the namespace: our nftables table as entries, interfaces and per-interface packets out."""
    import json
    import socket

    from mgm.plugins.forwarder.nftables import Libnftables, NftError

    names = {index: name for index, name in socket.if_nameindex()}

    def name(value: Any) -> str:
        text = str(value)
        return names.get(int(text), text) if text.isdigit() else text

    nft = Libnftables()
    try:
        data = json.loads(nft.run(f"list table ip {table}", json_output=True))["nftables"]
    except NftError:
        return {"entries": [], "interfaces": [], "out": {}}
    finally:
        nft.close()
    chains: dict[str, list[str]] = {}
    out: dict[str, int] = {}
    interfaces: list[str] = []
    sg = []
    wrong_if: dict[tuple[str, str], int] = {}
    for item in data:
        if "set" in item and item["set"]["name"] == "ifs":
            interfaces = sorted(name(v) for v in item["set"].get("elem", []))
        elif "map" in item and item["map"]["name"] == "sg":
            sg = item["map"].get("elem", [])
        elif "map" in item and item["map"]["name"] == "known":
            for element, _verdict in item["map"].get("elem", []):
                source, group = element["elem"]["val"]["concat"]
                wrong_if[(source, group)] = element["elem"].get("counter", {}).get("packets", 0)
        elif "rule" in item and item["rule"]["chain"].startswith("oil_"):
            exprs = item["rule"]["expr"]
            dev = next(name(e["dup"]["dev"]) for e in exprs if "dup" in e)
            packets = next((e["counter"]["packets"] for e in exprs if "counter" in e), 0)
            chains.setdefault(item["rule"]["chain"], []).append(dev)
            out[dev] = out.get(dev, 0) + packets
    for ifname in interfaces:
        out.setdefault(ifname, 0)
    entries = []
    for element, verdict in sg:
        iif, source, group = element["elem"]["val"]["concat"]
        counter = element["elem"].get("counter", {})
        oifs = sorted(chains.get(verdict["goto"]["target"], [])) if "goto" in verdict else []
        counts = counter.get("packets", 0), counter.get("bytes", 0), wrong_if.get((source, group), 0)
        entries.append(((source, group), (name(iif), oifs, *counts)))
    return {"entries": entries, "interfaces": interfaces, "out": out}

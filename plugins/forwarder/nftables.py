"""The nftables dataplane: real multicast forwarding on kernels without a multicast routing table.

Many kernels (container and microVM kernels among them) are built without
CONFIG_IP_MROUTE, and the MRT API has a ceiling of 32 VIFs.  nf_tables can
forward multicast too: ``dup to ip daddr device IF`` in the prerouting hook
sends a copy of the packet out of IF with its TTL decremented, and the
original, for which the kernel has no multicast route, is delivered
locally only.  This module keeps one table per forwarder instance::

    table ip mgmbus {                      # comment names the NFLOG group: the instance's mark
      set ifs      { type iface_index }    # the interfaces the manager's owners hold ("VIFs")
      map sg       { iif . S . G : goto oil_<hash> | accept (negative) ; counter per element }
      map known    { S . G : goto wrong_if ; counter per element = packets on a wrong interface }
      set members  { oif . S . G }         # only with wrong_if = "oil"
      set new_seen, wrongif_seen           # dynamic, with timeouts: at most one report per flow in a while
      chain oil_<hash> { counter dup to ip daddr device N; ... }  # one per distinct OIL, shared by its entries
      chain wrong_if   { ... log group N prefix "mgm-wrongif" }
      chain pre        { prerouting, priority raw:
                         unicast, 224.0.0.0/24, looped back, TTL <= 1: accept (never forwarded)
                         iif . saddr . daddr vmap @sg          # established flows: one lookup
                         saddr . daddr vmap @known             # a known (S,G) on the wrong interface
                         iif not in @ifs: accept
                         first packet of a new flow: log group N prefix "mgm-new" (rate-limited) }
    }

So established flows cost one map lookup in the kernel and nothing in user
space; new flows and wrong-interface packets reach the forwarder through
NFLOG (`nflog`) as the same upcalls MRT produces.  The VIF of the `Mirror`
is the if_index itself (there is no VIF table, hence no ceiling).

Changes are queued by the `Dataplane` calls and applied in batches: each
`take_batch` is one libnftables command buffer, which nftables applies as
one netlink transaction (all or nothing).  `run_batch` may run in a worker
thread (libnftables releases the GIL); `commit` then updates what we know
is installed, and after a failure reads the truth back from the kernel.

A replaced element keeps its counters (read in the same batch, written
into the new element), so packet counts are continuous like MRT's; the
owner settles what the old element counted (`Mirror.settle_replaced`).  The table
stays when the process dies, and keeps forwarding; the next forwarder
`read_installed` and adopts it.  A clean stop deletes the table.

libnftables is the library behind the ``nft`` command (Debian package
``libnftables1``), loaded with ctypes; pyroute2 has no nf_tables
expressions for maps, concatenations or ``dup``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mgm.plugins.forwarder.mirror import NO_COUNT, Entry, SgKey
from mgm.plugins.forwarder.mroute import SgCount
from mgm.plugins.forwarder.nflog import HEADER_RANGE, NEW_PREFIX, WRONG_IF_PREFIX
from mgm.plugins.igmp.packet import checksum

log = logging.getLogger(__name__)

DEFAULT_TABLE = "mgmbus"
DEFAULT_NFLOG_GROUP = 28007
"""An NFLOG group far from the 0-10 that tools use by default; a second instance here picks another."""
NEW_FLOW_HOLD = 5
"""Seconds between two new-flow reports of one (interface, source, group) that is still unresolved."""
WRONG_IF_HOLD = 3
"""Seconds between two wrong-interface reports of one (interface, source, group), as MRT's assert limit."""
REPORT_RATE = 2000
"""New-flow reports per second at most, whatever arrives (a burst of 1,000 passes at once)."""
SEEN_SIZE = 65536
PACKET_LOOPBACK = 5
"""The pkttype of a multicast copy the kernel loops back to this host when it sends one out (our own duplicates
among them): seen in prerouting on the outgoing interface, it is neither a new flow nor a wrong interface."""
NFT_CTX_OUTPUT_JSON = 1 << 4
_COMMENT = "mgmbus forwarder, NFLOG group {group}"
_MARK = "mgmbus_nflog_"
"""An empty chain named for the NFLOG group: how an instance knows its own table (JSON shows no comments)."""
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")


class NftError(OSError):
    """An nftables command failed; the message is nftables' own error text."""


class Libnftables:
    """libnftables through ctypes: command buffers in, output text out; one context, used by one thread at a time."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise NftError(errno.ENOENT, "libnftables is not installed (Debian and Ubuntu: apt-get install "
                                         f"libnftables1): {exc}") from exc  # fmt: skip
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise NftError(errno.ENOMEM, "nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, commands: str, *, json_output: bool = False) -> str:
        """Run a command buffer (one transaction); its output, or `NftError` with nftables' message."""
        with self.lock:
            self.lib.nft_ctx_output_set_flags(self.ctx, NFT_CTX_OUTPUT_JSON if json_output else 0)
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, commands.encode())
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            code = errno.ENOENT if "No such file or directory" in err else errno.EINVAL
            raise NftError(code, " ".join(err.split()) or f"nftables failed ({rc})")
        return out

    def close(self) -> None:
        with self.lock:
            if self.ctx:
                self.lib.nft_ctx_free(self.ctx)
                self.ctx = None


def nf_tables_error() -> str | None:
    """Why this machine cannot run the nftables dataplane, or None: libnftables and nf_tables answer."""
    try:
        nft = Libnftables()
    except NftError as exc:
        return str(exc)
    try:
        nft.run("list tables")
    except NftError as exc:
        return f"nf_tables does not answer: {exc}"
    finally:
        nft.close()
    return None


def oil_chain(oifs: Iterable[int]) -> str:
    """The name of the chain that sends a packet out of `oifs` (the same OIL, the same chain)."""
    text = ",".join(str(i) for i in sorted(oifs))
    return "oil_" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _key(if_index: int, key: SgKey) -> str:
    return f"{if_index} . {key[0]} . {key[1]}"


def _verdict(entry: Entry) -> str:
    return f"goto {oil_chain(entry.oifs)}" if entry.oifs else "accept"


@dataclass
class Batch:
    """What one transaction changes: computed from the queued calls against what is installed."""

    ifs_add: list[int] = field(default_factory=list)
    ifs_del: list[int] = field(default_factory=list)
    chains_add: list[frozenset[int]] = field(default_factory=list)
    chains_del: list[frozenset[int]] = field(default_factory=list)
    entries: dict[SgKey, tuple[Entry | None, Entry | None]] = field(default_factory=dict)  # key -> (have, want)
    counters: dict[SgKey, SgCount] = field(default_factory=dict)
    """What an added element's counter starts from: the old element's where it replaces one (`run_batch` reads
    them); the packet sent on by hand (`HeldPackets`) where it is new."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    error: str | None = None


class NftDataplane:
    """The `Dataplane` on nftables (see the module doc); the VIF number of an interface is its if_index."""

    def __init__(self, *, table: str = DEFAULT_TABLE, nflog_group: int = DEFAULT_NFLOG_GROUP,
                 wrong_if: str = "all", nft: Libnftables | None = None) -> None:  # fmt: skip
        if not TABLE_NAME.match(table):
            raise ValueError(f"nftables table name {table!r}: letters, digits and _ (at most 31), a letter first")
        if wrong_if not in ("all", "oil", "none"):
            raise ValueError(f"wrong_if must be all, oil or none, not {wrong_if!r}")
        self.table = table
        self.nflog_group = nflog_group
        self.wrong_if = wrong_if
        self.nft = nft if nft is not None else Libnftables()
        # What the kernel has (as far as committed transactions say).
        self.ifs: set[int] = set()
        self.entries: dict[SgKey, Entry] = {}
        self.chains: Counter[frozenset[int]] = Counter()  # OIL -> entries using its chain
        # What the calls since the last batch asked for.
        self.pending_ifs: dict[int, bool] = {}
        self.pending: dict[SgKey, Entry | None] = {}
        self.counts: dict[SgKey, SgCount] = {}  # the last counters read
        self.on_pending: Callable[[], None] | None = None
        """Called when a change is queued and none was before: the owner schedules a batch."""

    # --- the table ------------------------------------------------------------------------------------

    def ruleset(self) -> str:
        """The table, its sets and chains, created where missing; its two rule chains written anew."""
        t = f"ip {self.table}"
        key3 = "iface_index . ipv4_addr . ipv4_addr"
        log_header = f"group {self.nflog_group} snaplen {HEADER_RANGE}"
        log_packet = f"group {self.nflog_group}"  # the whole packet: sent on once its flow is resolved
        flow = "meta iif . ip saddr . ip daddr"
        wrong_if_rules = []
        if self.wrong_if != "none":
            wrong_if_rules.append("meta iif != @ifs accept")
            if self.wrong_if == "oil":
                wrong_if_rules.append(f"{flow} != @members accept")
            wrong_if_rules += [
                f"{flow} @wrongif_seen accept",
                f"limit rate {REPORT_RATE}/second burst 1000 packets add @wrongif_seen {{ {flow} }} "
                f'log prefix "{WRONG_IF_PREFIX}" {log_header}',
            ]
        pre_rules = [
            "ip daddr != 224.0.0.0/4 accept",
            "ip daddr 224.0.0.0/24 accept",
            f"meta pkttype {PACKET_LOOPBACK} accept",
            "ip ttl <= 1 accept",
            f"{flow} vmap @sg",
            "ip saddr . ip daddr vmap @known",
            "meta iif != @ifs accept",
            f"{flow} @new_seen accept",
            f"limit rate {REPORT_RATE}/second burst 1000 packets add @new_seen {{ {flow} }} "
            f'log prefix "{NEW_PREFIX}" {log_packet}',
        ]
        lines = [
            f'add table {t} {{ comment "{_COMMENT.format(group=self.nflog_group)}"; }}',
            f"add chain {t} {_MARK}{self.nflog_group}",
            f"add set {t} ifs {{ type iface_index; }}",
            f"add set {t} members {{ type {key3}; }}",
            f"add set {t} new_seen {{ type {key3}; flags dynamic, timeout; timeout {NEW_FLOW_HOLD}s; "
            f"size {SEEN_SIZE}; }}",
            f"add set {t} wrongif_seen {{ type {key3}; flags dynamic, timeout; timeout {WRONG_IF_HOLD}s; "
            f"size {SEEN_SIZE}; }}",
            f"add chain {t} wrong_if",
            f"flush chain {t} wrong_if",
            *(f"add rule {t} wrong_if {rule}" for rule in wrong_if_rules),
            f"add map {t} sg {{ type {key3} : verdict; counter; }}",
            f"add map {t} known {{ type ipv4_addr . ipv4_addr : verdict; counter; }}",
            f"add chain {t} pre {{ type filter hook prerouting priority raw; policy accept; }}",
            f"flush chain {t} pre",
            *(f"add rule {t} pre {rule}" for rule in pre_rules),
        ]
        return "\n".join(lines) + "\n"

    def owner(self) -> str | None:
        """Whose table of our name the kernel has: None (no such table), "mine" (an instance with this NFLOG
        group: a crashed predecessor), "mgmbus NFLOG group N" (another instance) or "" (not mgmbus's)."""
        tables = json.loads(self.nft.run("list tables", json_output=True)).get("nftables", [])
        if not any(t.get("table", {}).get("family") == "ip" and t["table"].get("name") == self.table for t in tables):
            return None
        chains = json.loads(self.nft.run("list chains ip", json_output=True)).get("nftables", [])
        for item in chains:
            chain = item.get("chain", {})
            if chain.get("table") == self.table and str(chain.get("name", "")).startswith(_MARK):
                group = chain["name"][len(_MARK) :]
                return "mine" if group == str(self.nflog_group) else f"mgmbus NFLOG group {group}"
        return ""

    def open(self) -> tuple[set[int], dict[SgKey, Entry]]:
        """Create the table, or take over a previous instance's: what it already forwards (ifs, entries).

        A table of this name that is not an mgmbus forwarder's with this
        NFLOG group (the operator's own, another instance's) is never
        touched: `NftError` says so.
        """
        owner = self.owner()
        if owner not in (None, "mine"):
            whose = f"another mgmbus forwarder's ({owner})" if owner else "not mgmbus's"
            raise NftError(errno.EEXIST, f"nftables table ip {self.table} exists and is {whose}: it is left "
                                         "alone; give this forwarder another nft_table (and nflog_group)")  # fmt: skip
        ifs: set[int] = set()
        entries: dict[SgKey, Entry] = {}
        if owner == "mine":
            try:
                ifs, entries = self.read_installed()
                self.nft.run(self.ruleset())
            except (NftError, ValueError, KeyError, TypeError) as exc:
                log.warning("nftables table ip %s of a previous forwarder cannot be taken over (%s): it is "
                            "replaced, and its flows are set up again", self.table, exc)  # fmt: skip
                self.nft.run(f"delete table ip {self.table}")
                self.nft.run(self.ruleset())
                ifs, entries = set(), {}
        else:
            self.nft.run(self.ruleset())
        self._set_installed(ifs, entries)
        return ifs, entries

    def remove(self) -> None:
        """Delete the table (a clean stop): nothing of ours forwards any more; queued changes are dropped."""
        self.pending.clear()
        self.pending_ifs.clear()
        try:
            self.nft.run(f"delete table ip {self.table}")
        except NftError as exc:
            if exc.errno != errno.ENOENT:
                raise
        self._set_installed(set(), {})

    def close(self) -> None:
        self.nft.close()

    # --- the Dataplane calls: queued ----------------------------------------------------------------------

    def add_vif(self, vifi: int, if_index: int, *, threshold: int = 1) -> None:
        assert vifi == if_index, "the nftables dataplane's VIF is the if_index"
        self._queue_if(if_index, True)

    def del_vif(self, vifi: int) -> None:
        self._queue_if(vifi, False)

    def add_mfc(self, source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> None:
        self._queue((source, group), Entry(parent, frozenset(oifs)))

    def del_mfc(self, source: str, group: str) -> None:
        self._queue((source, group), None)

    def sg_count(self, source: str, group: str) -> SgCount | None:
        """The entry's counters as last read: by `read_counters`, or when a batch replaced its element (without
        I/O: the mirror asks for every entry it settles, and a replaced entry is settled by `replaced`)."""
        return self.counts.get((source, group))

    def _queue_if(self, if_index: int, present: bool) -> None:
        self.pending_ifs[if_index] = present
        self._poke()

    def _queue(self, key: SgKey, want: Entry | None) -> None:
        self.pending[key] = want
        self._poke()

    def _poke(self) -> None:
        if self.on_pending is not None and len(self.pending) + len(self.pending_ifs) == 1:
            self.on_pending()

    # --- batches ------------------------------------------------------------------------------------------

    def take_batch(self) -> Batch | None:
        """The queued changes that differ from what is installed, as one batch; None when there are none."""
        pending, self.pending = self.pending, {}
        pending_ifs, self.pending_ifs = self.pending_ifs, {}
        batch = Batch()
        batch.ifs_add = [i for i, present in sorted(pending_ifs.items()) if present and i not in self.ifs]
        batch.ifs_del = [i for i, present in sorted(pending_ifs.items()) if not present and i in self.ifs]
        uses = Counter(self.chains)
        for key, want in pending.items():
            have = self.entries.get(key)
            if want == have:
                continue
            batch.entries[key] = (have, want)
            if have is not None and have.oifs:
                uses[have.oifs] -= 1
            if want is not None and want.oifs:
                uses[want.oifs] += 1
        batch.chains_add = [oil for oil, n in uses.items() if n > 0 and oil not in self.chains]
        batch.chains_del = [oil for oil, n in uses.items() if n <= 0 and oil in self.chains]
        if not (batch.entries or batch.ifs_add or batch.ifs_del or batch.chains_add or batch.chains_del):
            return None
        return batch

    def render(self, batch: Batch) -> str:
        """The batch as one nftables command buffer (one transaction)."""
        t = f"ip {self.table}"
        out: list[str] = []

        def elements(verb: str, obj: str, items: list[str]) -> None:
            if items:
                out.append(f"{verb} element {t} {obj} {{ {', '.join(items)} }}")

        elements("add", "ifs", [str(i) for i in batch.ifs_add])
        for oil in batch.chains_add:
            name = oil_chain(oil)
            out.append(f"add chain {t} {name}")
            out.append(f"flush chain {t} {name}")
            out.extend(f"add rule {t} {name} counter dup to ip daddr device {i}" for i in sorted(oil))
        gone: dict[str, list[str]] = {"sg": [], "known": [], "members": []}  # elements to delete, by set or map
        new: dict[str, list[str]] = {"sg": [], "known": [], "members": []}  # and to add
        for key, (have, want) in batch.entries.items():
            if have is not None:
                gone["sg"].append(_key(have.parent, key))
                if want is None:
                    gone["known"].append(f"{key[0]} . {key[1]}")
                if self.wrong_if == "oil":
                    left = have.oifs - (want.oifs if want is not None else frozenset())
                    gone["members"] += [_key(i, key) for i in sorted(left)]
            if want is not None:
                count = batch.counters.get(key)
                counter = f" counter packets {count.packets} bytes {count.bytes}" if count else ""
                new["sg"].append(f"{_key(want.parent, key)}{counter} : {_verdict(want)}")
                if have is None:
                    new["known"].append(f"{key[0]} . {key[1]} : goto wrong_if")
                if self.wrong_if == "oil":
                    joined = want.oifs - (have.oifs if have is not None else frozenset())
                    new["members"] += [_key(i, key) for i in sorted(joined)]
        for verb, elements_of in (("delete", gone), ("add", new)):
            for obj, items in elements_of.items():
                elements(verb, obj, items)
        for oil in batch.chains_del:
            out.append(f"delete chain {t} {oil_chain(oil)}")
        elements("delete", "ifs", [str(i) for i in batch.ifs_del])
        return "\n".join(out) + "\n"

    def run_batch(self, batch: Batch) -> BatchResult:
        """Apply the batch in one transaction (may run in a worker thread: touches only the kernel).

        The counters of the elements it replaces are read first (one read for all), so the new elements
        start where the old ones were and `replaced` can settle them.
        """
        replaced = [key for key, (have, want) in batch.entries.items() if have is not None and want is not None]
        if replaced:
            batch.counters.update(self._read_element_counters(replaced, batch))
        try:
            self.nft.run(self.render(batch))
        except NftError as exc:
            return BatchResult(str(exc))
        return BatchResult()

    def commit(self, batch: Batch, result: BatchResult) -> dict[SgKey, Entry | None]:
        """Record a batch's outcome; after a failure, what the kernel holds for each entry the batch wanted to
        change (read back), for the mirror to believe (`Mirror.dataplane_failed`)."""
        if result.error is None:
            self.ifs.update(batch.ifs_add)
            self.ifs.difference_update(batch.ifs_del)
            for key, (have, want) in batch.entries.items():
                if have is not None and have.oifs:
                    self.chains[have.oifs] -= 1
                    if self.chains[have.oifs] <= 0:
                        self.chains.pop(have.oifs)
                if want is None:
                    self.entries.pop(key, None)
                    self.counts.pop(key, None)
                else:
                    self.entries[key] = want
                    if want.oifs:
                        self.chains[want.oifs] += 1
                    if key in batch.counters:
                        self.counts[key] = batch.counters[key]
            for oil in batch.chains_del:
                self.chains.pop(oil, None)
            return {}
        changes = len(batch.ifs_add) + len(batch.ifs_del)
        log.error("nftables refused a batch of %d entr(ies) and %d interface change(s): %s; reading back what "
                  "the kernel has", len(batch.entries), changes, result.error)  # fmt: skip
        try:
            ifs, entries = self.read_installed()
        except (NftError, ValueError, KeyError, TypeError) as exc:
            log.error("nftables table ip %s cannot be read back (%s): believing nothing is installed", self.table, exc)
            ifs, entries = set(), {}
        self._set_installed(ifs, entries)
        return {key: entries.get(key) for key in batch.entries}

    def flush(self) -> dict[SgKey, Entry | None]:
        """take, run and commit every queued change now, in this thread (start-up, stop, tests)."""
        failed: dict[SgKey, Entry | None] = {}
        while (batch := self.take_batch()) is not None:
            failed.update(self.commit(batch, self.run_batch(batch)))
        return failed

    def _set_installed(self, ifs: set[int], entries: Mapping[SgKey, Entry]) -> None:
        self.ifs = set(ifs)
        self.entries = dict(entries)
        self.chains = Counter(entry.oifs for entry in self.entries.values() if entry.oifs)
        self.counts = {k: v for k, v in self.counts.items() if k in self.entries}

    def _read_element_counters(self, keys: list[SgKey], batch: Batch) -> dict[SgKey, SgCount]:
        """The counters of the elements about to be replaced (one read for all of them)."""
        items = ", ".join(_key(have.parent, key) for key in keys if (have := batch.entries[key][0]) is not None)
        try:
            text = self.nft.run(f"get element ip {self.table} sg {{ {items} }}")
        except NftError as exc:
            log.warning("counters of %d replaced entr(ies) not read (%s): they go on from the last read", len(keys),
                        exc)  # fmt: skip
            return {key: self.counts[key] for key in keys if key in self.counts}
        out = {}
        for _if, source, group, packets, nbytes in _SG_COUNTER.findall(text):
            wrong_if = self.counts.get((source, group), NO_COUNT).wrong_if
            out[(source, group)] = SgCount(int(packets), int(nbytes), wrong_if)
        return out

    # --- reading the kernel -------------------------------------------------------------------------------

    def read_installed(self) -> tuple[set[int], dict[SgKey, Entry]]:
        """What our table holds: managed interfaces and entries (a crashed predecessor's, or the truth after an
        error).  Interfaces come back by name where they exist (nftables prints names)."""
        data = json.loads(self.nft.run(f"list table ip {self.table}", json_output=True))
        index = {name: i for i, name in socket.if_nameindex()}
        ifs: set[int] = set()
        chains: dict[str, set[int]] = {}
        sg: list[tuple[Any, Any]] = []
        for item in data.get("nftables", []):
            if "set" in item and item["set"]["name"] == "ifs":
                ifs = {_if_index(v, index) for v in item["set"].get("elem", [])}
            elif "map" in item and item["map"]["name"] == "sg":
                sg = [(e[0], e[1]) for e in item["map"].get("elem", [])]
            elif "rule" in item and item["rule"]["chain"].startswith("oil_"):
                for expr in item["rule"].get("expr", []):
                    if "dup" in expr:
                        chains.setdefault(item["rule"]["chain"], set()).add(_if_index(expr["dup"]["dev"], index))
        entries: dict[SgKey, Entry] = {}
        for element, verdict in sg:
            value = element["elem"]["val"] if isinstance(element, dict) and "elem" in element else element
            if_name, source, group = value["concat"]
            if "goto" in verdict:
                oifs = frozenset(chains.get(verdict["goto"]["target"], ()))
            elif "accept" in verdict:
                oifs = frozenset()
            else:
                continue
            entries[(str(source), str(group))] = Entry(_if_index(if_name, index), oifs)
        return ifs, entries

    def read_counters(self) -> None:
        """Read every entry's counters (packets, bytes, and wrong-interface packets) into `counts`.

        One dump of the two maps; the text form, which nftables writes about
        twice as fast as its JSON.  May run in a worker thread.
        """
        sg_text = self.nft.run(f"list map ip {self.table} sg")
        known_text = self.nft.run(f"list map ip {self.table} known")
        known = {(m[0], m[1]): int(m[2]) for m in _KNOWN_COUNTER.findall(known_text)}
        counts = {}
        for _if, source, group, packets, nbytes in _SG_COUNTER.findall(sg_text):
            key = (source, group)
            counts[key] = SgCount(int(packets), int(nbytes), known.get(key, 0))
        self.counts = counts


def fix_udp_checksum(packet: bytearray) -> None:
    """Compute a UDP packet's checksum anew, where it has one (not 0).

    A packet copied to user space before it left its sender's host can carry
    a checksum the sender's stack left for the hardware to finish (veth,
    local senders: CHECKSUM_PARTIAL); the kernel's own copies keep that
    state, ours must be whole.
    """
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != socket.IPPROTO_UDP or len(packet) < ihl + 8 or packet[6] & 0x3F or packet[7]:
        return  # not UDP, truncated, or a fragment (the checksum covers the whole datagram)
    udp = packet[ihl:]
    length = struct.unpack_from("!H", udp, 4)[0]
    if length < 8 or length > len(udp) or struct.unpack_from("!H", udp, 6)[0] == 0:
        return
    udp[6:8] = b"\0\0"
    pseudo = bytes(packet[12:20]) + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    struct.pack_into("!H", packet, ihl + 6, checksum(pseudo + bytes(udp[:length])) or 0xFFFF)


class HeldPackets:
    """The first packet of each flow that is being resolved, sent on out of the entry's OIL once it is installed.

    MRT holds a few packets of an unresolved (S,G) in the kernel and sends them
    when the entry comes; nftables cannot hold a packet, but the new-flow rule
    hands us a copy, which we send the same way: through a raw socket
    (IP_HDRINCL: the header as it came, the TTL one lower) out of each outgoing
    interface in turn.  At most `most` flows are held, each for `hold` seconds.
    """

    def __init__(self, *, hold: float = 10.0, most: int = 4096) -> None:
        self.hold_time = hold
        self.most = most
        self.packets: dict[SgKey, tuple[bytes, float]] = {}
        self.sock: socket.socket | None = None

    def hold(self, key: SgKey, packet: bytes, now: float) -> None:
        if len(self.packets) >= self.most:
            self.packets = {k: v for k, v in self.packets.items() if now - v[1] < self.hold_time}
        if len(packet) >= 20 and len(self.packets) < self.most:
            self.packets.setdefault(key, (packet, now))

    def discard(self, key: SgKey) -> None:
        self.packets.pop(key, None)

    def count(self, batch: Batch) -> None:
        """Start the counter of each new entry of `batch` whose first packet is held with that packet, as MRT
        counts the packets it held in the entry they resolve to."""
        for key, (have, want) in batch.entries.items():
            held = self.packets.get(key)
            if held is not None and have is None and want is not None and want.oifs:
                batch.counters[key] = SgCount(1, len(held[0]), 0)

    def release(self, key: SgKey, oifs: Iterable[int], now: float) -> int:
        """Send the held packet of `key` out of each of `oifs`; how many copies went."""
        held = self.packets.pop(key, None)
        if held is None or now - held[1] >= self.hold_time or held[0][8] <= 1:
            return 0
        packet = bytearray(held[0])
        packet[8] -= 1  # TTL, as a router forwards it; the kernel recomputes the header checksum (IP_HDRINCL)
        fix_udp_checksum(packet)
        if self.sock is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sent = 0
        for if_index in sorted(oifs):
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=8si", bytes(8), if_index))
                self.sock.sendto(packet, (key[1], 0))
                sent += 1
                log.debug("held packet of (%s, %s) sent out of if_index %d", *key, if_index)
            except OSError as exc:
                log.debug("held packet of (%s, %s) not sent out of if_index %d: %s", *key, if_index, exc)
        return sent

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_ADDR = r"(\d+\.\d+\.\d+\.\d+)"
_SG_COUNTER = re.compile(rf'("[^"]*"|\S+) \. {_ADDR} \. {_ADDR} counter packets (\d+) bytes (\d+)')
_KNOWN_COUNTER = re.compile(rf"{_ADDR} \. {_ADDR} counter packets (\d+)")


def _if_index(value: Any, index: Mapping[str, int]) -> int:
    """An interface as nftables prints it (a name where the interface exists, else its number)."""
    text = str(value).strip('"')
    if text.isdigit():
        return int(text)
    if text in index:
        return index[text]
    raise ValueError(f"interface {text!r} printed by nftables does not exist here")

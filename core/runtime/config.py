"""The one configuration loader: one TOML file for the manager and every plugin.

Format::

    [manager]                  # optional; every key optional
    api = "ipc:///run/mgm/api"
    events = "ipc:///run/mgm/events"
    log_level = "info"         # debug, info, warning, error
    # tcp endpoints need CURVE (docs/security.md); paths are relative to this file
    curve_secret_key = "keys/manager.key_secret"     # the manager's key pair: it binds tcp only with one
    curve_server_public_key = "Z85 OF manager.key"   # clients: the manager's public key
    curve_client_key = "keys/ops.key_secret"         # clients (mgm show, monitor, plugins): our key pair

    [[manager.clients]]        # the manager's allow-list: who may connect over tcp, and claim what
    name = "pim-east"
    public_key = "Z85 OF pim-east.key"  # as `mgm keys list` prints it
    protocol_ids = [21]                 # may register these protocol ids (none: observe only)
    interfaces = ["eth3", 7]            # may take these interfaces (names are the manager's)

    [plugins.igmp]             # NAME = the plugin's entry point name (group mgm.plugins)
    interfaces = ["eth1", 3]   # names or if_index ints, or {interface = "eth2", next_hop = "10.0.0.2"}
    protocol_id = 10           # optional where the plugin's mgm_protocol hook says it
    component_id = 1
    curve_key = "keys/igmp.key_secret"  # this plugin's key pair over tcp (default: manager.curve_client_key)
    robustness = 2             # any other key belongs to the plugin

The file is read once and validated here, so nobody downstream checks a type
again.  Its mistakes raise one `ConfigError` naming the file, the key path and
the line of each (`Mistakes` gathers them: a user fixes all in one go, not one
per run).  `mgm up` without ``--config`` uses `DEFAULT_CONFIG`, which lives in
this module so that the installed package needs no file of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from mgm.bus.endpoints import check_ipc_endpoint, default_api, default_events
from mgm.core.runtime.logs import LEVELS
from mgm.core.types import IFF_LOOPBACK, IFF_MULTICAST, IFF_UP

MANAGER_KEYS = frozenset({"api", "events", "log_level", "curve_secret_key", "curve_server_public_key",
                          "curve_client_key", "clients"})
CLIENT_KEYS = frozenset({"name", "public_key", "protocol_ids", "interfaces"})
PLUGIN_COMMON_KEYS = frozenset({"interfaces", "protocol_id", "component_id", "curve_key"})
"""Keys of a [plugins.NAME] table that the host reads; every other key is the plugin's own."""
ID_MAX = 2**32 - 1
T = TypeVar("T")
DEFAULT_SOURCE = "<embedded default config>"

DEFAULT_CONFIG = """\
# The base of the configuration `mgm up` runs without --config (see `default_config`,
# which adds the plugins this machine can run): the manager on the default endpoints.
[manager]
log_level = "info"
"""

MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


def multicast_prefix(text: str) -> ipaddress.IPv4Network:
    """A group prefix from a configuration ("239.1.0.0/16", or an address for one group): the one parser
    every plugin's group lists use; ValueError with a sentence saying what is wrong."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 prefix like 239.1.0.0/16 ({exc})") from None
    if not net.subnet_of(MULTICAST):
        raise ValueError(f"{text!r} is not inside 224.0.0.0/4 (multicast groups)")
    return net


@dataclass(frozen=True, slots=True)
class DefaultChoice:
    """What `mgm up` runs without --config: the configuration text, and why (one log line)."""

    text: str
    reason: str
    simulated: bool


def multicast_interfaces(flags: Mapping[str, int]) -> list[str]:
    """Names (sorted) of the interfaces that are up, multicast-capable and not loopback; `flags` by name."""
    wanted = IFF_UP | IFF_MULTICAST
    return sorted(name for name, f in flags.items() if f & wanted == wanted and not f & IFF_LOOPBACK)


def default_config(is_root: bool, backend: str | None, why: str | None, interfaces: Sequence[str]) -> DefaultChoice:
    """The embedded default for this machine: IGMP and the Linux forwarder, or the simulated forwarder.

    Real forwarding needs all three: root (raw sockets), a forwarding backend
    the kernel offers (`backend`: "mrt", the multicast routing socket, or
    "nft", nftables where the kernel has no multicast routing; `why` says
    why MRT was not taken, or why neither works when `backend` is None) and
    at least one interface from `multicast_interfaces`.  The backend is
    written into the text, so a restarted forwarder does not decide anew.
    Without any of them the simulated forwarder runs alone, no IGMP: IGMP
    queriers on links where nothing can be forwarded would only mislead the
    hosts (and, where another daemon holds the socket, fight its querier).
    """
    if not is_root:
        why = "not root (raw IGMP sockets and the kernel's forwarding need root)"
    elif backend is None:
        why = f"the kernel offers no forwarding backend: {why}"
    elif not interfaces:
        why = "no interface is up, multicast-capable and not loopback"
    else:
        names = ", ".join(json.dumps(name) for name in interfaces)
        how = ("the kernel's multicast routing table (MRT)" if backend == "mrt"
               else f"nftables ({' '.join((why or 'chosen').split())})")  # fmt: skip
        text = (
            f"{DEFAULT_CONFIG}\n"
            f"# root, forwarding through {how}, and these interfaces are up and multicast-capable:\n"
            f"[plugins.igmp]\ninterfaces = [{names}]\n\n"
            f'[plugins.forwarder]\nbackend = "{backend}"\n'
        )
        reason = (f"default configuration: IGMP and the Linux kernel forwarder on {', '.join(interfaces)}, "
                  f"forwarding through {how}")  # fmt: skip
        return DefaultChoice(text, reason, simulated=False)
    comment = " ".join(str(why).split())  # one line, whatever the error message holds
    text = f"{DEFAULT_CONFIG}\n# {comment}: the simulated forwarder only, nothing is forwarded\n"
    text += "[plugins.forwarder-sim]\n"
    reason = f"default configuration: the SIMULATED forwarder, nothing is really forwarded: {why}"
    return DefaultChoice(text, reason, simulated=True)


_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_Z85 = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
"""A CURVE public key as z85 text (32 bytes -> 40 characters of ZeroMQ's z85 alphabet)."""


class ConfigError(ValueError):
    """A configuration mistake: where (file, key path, line) and what; `also`, the others found with it.

    `str()` is one line per mistake; `lines()` gives them apart, to prefix each.
    """

    def __init__(self, source: str, key_path: str | None, line: int | None, message: str,
                 also: Sequence[ConfigError] = ()) -> None:  # fmt: skip
        self.source = source
        self.key_path = key_path
        self.line = line
        self.message = message
        self.also = tuple(also)
        where = source if line is None else f"{source}:{line}"
        what = f" {key_path}:" if key_path else ""
        self.one_line = f"{where}:{what} {message}"
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [self.one_line, *(e.one_line for e in self.also)]


class Mistakes:
    """Runs independent checks and keeps their ConfigErrors, so that all are reported at once, not the first."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def check(self, func: Callable[..., T], *args: Any) -> T | None:
        """func(*args), or None when it raised ConfigError (kept)."""
        try:
            return func(*args)
        except ConfigError as exc:
            self.add(exc)
            return None

    def add(self, exc: ConfigError) -> None:
        self.found += [exc, *exc.also]

    def raise_any(self) -> None:
        """Raise one ConfigError holding every mistake found, if any."""
        if self.found:
            first, *rest = self.found
            raise ConfigError(first.source, first.key_path, first.line, first.message, rest)


@dataclass(frozen=True, slots=True)
class InterfaceRef:
    """An interface as the configuration names it; the host resolves `name_or_index`."""

    name_or_index: str | int
    next_hop: str = "0.0.0.0"
    key_path: str = ""


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One [[manager.clients]] entry: a CURVE public key the manager admits over tcp, and what it may claim."""

    name: str
    public_key: bytes
    protocol_ids: frozenset[int] = frozenset()
    interfaces: tuple[InterfaceRef, ...] = ()
    key_path: str = ""


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    api: str | None = None
    events: str | None = None
    log_level: str | None = None
    curve_secret_key: Path | None = None
    curve_server_public_key: bytes | None = None
    curve_client_key: Path | None = None
    clients: tuple[ClientKey, ...] = ()


class PluginTable(Mapping[str, Any]):
    """A [plugins.NAME] table as hooks receive it: read-only, and knowing where it was written.

    A plugin checks its own keys with `error` (file, key path and line, like
    every other config error), and re-reads the file it came from
    (`source`, e.g. on SIGHUP) with `load`.
    """

    __slots__ = ("_data", "name", "source", "text")

    def __init__(self, data: Mapping[str, Any], name: str = "", source: str = "<string>", text: str = "") -> None:
        self._data = MappingProxyType(dict(data))
        self.name = name
        self.source = source
        self.text = text

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"PluginTable({dict(self._data)!r}, name={self.name!r}, source={self.source!r})"

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError for `key` (e.g. ``routes[2].group``) of this table, with its line."""
        key_path = f"plugins.{self.name}.{key}"
        return ConfigError(self.source, key_path, find_line(self.text, key_path), message)

    def config(self) -> Config:
        """The whole configuration this table was read from, read again from its text.

        For a plugin whose checks need more than its own table (other plugins'
        tables, lines of list elements) and that only has what a hook receives.
        """
        return loads(self.text, self.source)


def plugin_table(table: Mapping[str, Any], plugin: str) -> PluginTable:
    """`table` as the `PluginTable` the plugin host passes to hooks; TypeError for anything else."""
    if not isinstance(table, PluginTable):
        raise TypeError(f"the {plugin} plugin needs the PluginTable the host passes, not {type(table).__name__}")
    return table


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One [plugins.NAME] table.  `table` is the whole table, read-only, as hooks receive it."""

    name: str
    interfaces: tuple[InterfaceRef, ...] = ()
    protocol_id: int | None = None
    component_id: int | None = None
    table: Mapping[str, Any] = field(default_factory=lambda: PluginTable({}))
    curve_key: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    text: str
    manager: ManagerConfig
    plugins: Mapping[str, PluginConfig]

    def error(self, key_path: str, message: str) -> ConfigError:
        """A ConfigError for a key of this file, with its line (for checks made later, e.g. by the host)."""
        return ConfigError(self.source, key_path, find_line(self.text, key_path), message)

    def plugin(self, name: str) -> PluginConfig:
        """The table of plugin `name`; an empty one where the file has none."""
        return self.plugins.get(name) or PluginConfig(name=name, table=PluginTable({}, name, self.source, self.text))


DEFAULT_LOG_LEVEL = "info"
"""The `mgm` command's default --log-level (core/cli/__init__.py)."""


def effective_manager(config: Config, api: str, events: str, log_level: str) -> ManagerConfig:
    """Endpoints and log level to use: the command line's where it says other than the default, else the config's.

    `mgm` fills --api/--events/--log-level with their defaults when they are
    not given, so a value equal to the default counts as not given.
    """
    m = config.manager
    return dataclasses.replace(
        m,
        api=api if api != default_api() or m.api is None else m.api,
        events=events if events != default_events() or m.events is None else m.events,
        log_level=log_level if log_level != DEFAULT_LOG_LEVEL or m.log_level is None else m.log_level,
    )


def load(path: str | Path | None) -> Config:
    """Read and validate a configuration file; None -> the embedded default."""
    if path is None:
        return loads(DEFAULT_CONFIG, DEFAULT_SOURCE)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), None, None, f"cannot read the configuration: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, None, f"not UTF-8 text: {exc}") from exc
    return loads(text, str(path))


def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate configuration text; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(source, None, line, f"not valid TOML: {exc}") from exc
    checker = _Checker(source, text)
    mistakes = Mistakes()  # each section and plugin table is checked, whatever the others hold
    for key in data:
        if key not in ("manager", "plugins"):
            mistakes.add(checker.error(key, "unknown section (expected [manager] or [plugins.NAME])"))
    manager = mistakes.check(checker.manager, data.get("manager", {}))
    plugins_raw = data.get("plugins", {})
    if not isinstance(plugins_raw, dict):
        mistakes.add(checker.error("plugins", "must be a table of [plugins.NAME] tables"))
        plugins_raw = {}
    plugins = {name: mistakes.check(checker.plugin, name, table) for name, table in plugins_raw.items()}
    mistakes.raise_any()
    assert manager is not None
    checked = {name: plugin for name, plugin in plugins.items() if plugin is not None}
    return Config(source=source, text=text, manager=manager, plugins=MappingProxyType(checked))


@dataclass(frozen=True, slots=True)
class _Checker:
    source: str
    text: str

    def error(self, key_path: str, message: str) -> ConfigError:
        return ConfigError(self.source, key_path, find_line(self.text, key_path), message)

    def manager(self, raw: Any) -> ManagerConfig:
        if not isinstance(raw, dict):
            raise self.error("manager", "must be a table")
        mistakes = Mistakes()
        for key in raw:
            if key not in MANAGER_KEYS:
                mistakes.add(self.error(f"manager.{key}", f"unknown key (known: {', '.join(sorted(MANAGER_KEYS))})"))
        manager = mistakes.check(self._manager_keys, raw)
        mistakes.raise_any()
        assert manager is not None
        return manager

    def _manager_keys(self, raw: dict[str, Any]) -> ManagerConfig:
        endpoints = {key: self.endpoint(f"manager.{key}", raw[key]) for key in ("api", "events") if key in raw}
        level = raw.get("log_level")
        if level is not None and level not in LEVELS:
            raise self.error("manager.log_level", f"must be one of {', '.join(LEVELS)}, not {level!r}")
        server_key = raw.get("curve_server_public_key")
        clients = raw.get("clients", [])
        if not isinstance(clients, list):
            raise self.error("manager.clients", "must be an array of tables ([[manager.clients]])")
        checked = tuple(self.client(f"manager.clients[{i}]", entry) for i, entry in enumerate(clients))
        for i, c in enumerate(checked):
            for other in checked[:i]:
                if c.name == other.name or c.public_key == other.public_key:
                    what = "name" if c.name == other.name else "public_key"
                    raise self.error(f"{c.key_path}.{what}", f"the same {what} as {other.key_path}")
        return ManagerConfig(
            api=endpoints.get("api"),
            events=endpoints.get("events"),
            log_level=level,
            curve_secret_key=self.path("manager.curve_secret_key", raw.get("curve_secret_key")),
            curve_server_public_key=None if server_key is None else self.z85("manager.curve_server_public_key",
                                                                             server_key),
            curve_client_key=self.path("manager.curve_client_key", raw.get("curve_client_key")),
            clients=checked,
        )

    def client(self, key_path: str, raw: Any) -> ClientKey:
        if not isinstance(raw, dict):
            raise self.error(key_path, "must be a table with name, public_key, protocol_ids and interfaces")
        for key in raw:
            if key not in CLIENT_KEYS:
                raise self.error(f"{key_path}.{key}", f"unknown key (known: {', '.join(sorted(CLIENT_KEYS))})")
        for key in ("name", "public_key"):
            if key not in raw:
                raise self.error(key_path, f"{key} is missing")
        name = raw["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.error(f"{key_path}.name", f"a client name is letters, digits, '_' and '-', not {name!r}")
        ids = raw.get("protocol_ids", [])
        if not isinstance(ids, list):
            raise self.error(f"{key_path}.protocol_ids", "must be a list of protocol ids")
        protocol_ids = frozenset(self.ident(f"{key_path}.protocol_ids[{i}]", v) for i, v in enumerate(ids))
        interfaces = raw.get("interfaces", [])
        if not isinstance(interfaces, list):
            raise self.error(f"{key_path}.interfaces", "must be a list of interface names or indexes")
        refs = tuple(self.interface(f"{key_path}.interfaces[{i}]", v) for i, v in enumerate(interfaces))
        return ClientKey(name, self.z85(f"{key_path}.public_key", raw["public_key"]), protocol_ids, refs, key_path)

    def z85(self, key_path: str, value: Any) -> bytes:
        if not isinstance(value, str) or not _Z85.match(value):
            raise self.error(key_path, f"must be a CURVE public key in z85 (40 characters, as `mgm keys list` "
                                       f"prints it), not {value!r}")
        return value.encode("ascii")

    def path(self, key_path: str, value: Any) -> Path | None:
        """A file path; a relative one is relative to the configuration file's folder."""
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key_path, f"must be a file path, not {value!r}")
        path = Path(value)
        if not path.is_absolute() and not self.source.startswith("<"):
            path = Path(self.source).parent / path
        return path

    def endpoint(self, key_path: str, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith(("ipc://", "tcp://")):
            raise self.error(key_path, f"must be an endpoint string ipc://PATH or tcp://HOST:PORT, not {value!r}")
        try:
            check_ipc_endpoint(value)
        except ValueError as exc:
            raise self.error(key_path, str(exc)) from exc
        return value

    def plugin(self, name: str, raw: Any) -> PluginConfig:
        path = f"plugins.{name}"
        if not _NAME.match(name):
            raise self.error(path, "a plugin name is letters, digits, '_' and '-' (its entry point name)")
        if not isinstance(raw, dict):
            raise self.error(path, "must be a table ([plugins.NAME])")
        ids = {key: self.ident(f"{path}.{key}", raw[key]) for key in ("protocol_id", "component_id") if key in raw}
        interfaces = raw.get("interfaces", [])
        if not isinstance(interfaces, list):
            raise self.error(f"{path}.interfaces", "must be a list of interface names or indexes")
        mistakes = Mistakes()
        checked = [mistakes.check(self.interface, f"{path}.interfaces[{i}]", item) for i, item in enumerate(interfaces)]
        refs = tuple(ref for ref in checked if ref is not None)
        seen: set[tuple[str | int, str]] = set()
        for ref in refs:
            if (ref.name_or_index, ref.next_hop) in seen:
                mistakes.add(self.error(ref.key_path, f"interface {ref.name_or_index!r} is listed twice"))
            seen.add((ref.name_or_index, ref.next_hop))
        mistakes.raise_any()
        return PluginConfig(
            name=name,
            interfaces=refs,
            protocol_id=ids.get("protocol_id"),
            component_id=ids.get("component_id"),
            table=PluginTable(raw, name, self.source, self.text),
            curve_key=self.path(f"{path}.curve_key", raw.get("curve_key")),
        )

    def ident(self, key_path: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= ID_MAX:
            raise self.error(key_path, f"must be an integer from 0 to {ID_MAX}, not {value!r}")
        return value

    def interface(self, key_path: str, item: Any) -> InterfaceRef:
        next_hop = "0.0.0.0"
        if isinstance(item, dict):
            unknown = set(item) - {"interface", "next_hop"}
            if unknown or "interface" not in item:
                raise self.error(key_path, 'an interface table is {interface = NAME_OR_INDEX, next_hop = "A.B.C.D"}')
            next_hop = item.get("next_hop", next_hop)
            if not isinstance(next_hop, str) or not _IPV4.match(next_hop):
                raise self.error(key_path, f"next_hop must be a dotted-quad IPv4 address, not {next_hop!r}")
            item = item["interface"]
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise self.error(key_path, f"must be an interface name or index, not {item!r}")
        if isinstance(item, int) and not 0 <= item <= ID_MAX:
            raise self.error(key_path, f"an interface index is from 0 to {ID_MAX}, not {item}")
        if isinstance(item, str) and not 0 < len(item.encode()) < 16:
            raise self.error(key_path, f"{item!r} cannot be an interface name (1 to 15 bytes)")
        return InterfaceRef(item, next_hop, key_path)


# --- where a key is written -----------------------------------------------------------------
# tomllib reports lines only for syntax errors, so the line of a key is found by reading the
# text: table headers set the current path, `key = ...` lines add to it.

_HEADER = re.compile(r"^\s*\[\[?\s*(?P<path>[^\]]+?)\s*\]\]?\s*(#.*)?$")
_BARE_OR_QUOTED = r"""(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')"""
_KEYLINE = re.compile(rf"^\s*(?P<key>{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_PART = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([^"'.]+?))\s*""")


def _split_key(dotted: str) -> list[str]:
    parts = []
    for chunk in re.finditer(r"""(?:"[^"]*"|'[^']*'|[^.])+""", dotted):
        m = _PART.fullmatch(chunk.group(0))
        if m is None:
            return []
        parts.append(next(g for g in m.groups() if g is not None))
    return parts


def find_line(text: str, key_path: str) -> int | None:
    """The 1-based line where `key_path` (e.g. ``plugins.igmp.interfaces[1]``) is set, or None.

    A list index points at the line where that element starts (a list written
    over several lines, or the n-th ``[[table]]`` of an array of tables), else
    at the line of the list's key; a table's path points at its header.
    """
    if m := _INDEXED.match(key_path):
        found = _element_line(text, m.group("head"), int(m.group("index")), m.group("rest"))
        if found is not None:
            return found
    return _key_line(text, key_path)


def _key_line(text: str, key_path: str) -> int | None:
    wanted = _split_key(re.sub(r"\[\d+\]", "", key_path))
    if not wanted:
        return None
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = _split_key(m.group("path"))
            if table == wanted:
                return number
            continue
        if m := _KEYLINE.match(line):
            full = table + _split_key(m.group("key"))
            # the key itself, a key inside it, or an inline table holding it (`igmp = {interfaces = [...]}`)
            if full[: len(wanted)] == wanted or wanted[: len(full)] == full:
                return number
    return None


_INDEXED = re.compile(r"^(?P<head>[^\[\]]+)\[(?P<index>\d+)\](?P<rest>.*)$")


def _element_line(text: str, head: str, index: int, rest: str) -> int | None:
    """The line where element `index` of the list at `head` starts, or None where that cannot be told."""
    found = _element_starts(text, head)
    if found is None or index >= len(found[0]):
        return None
    starts, tables = found
    start = starts[index]
    inner = _split_key(re.sub(r"\[\d+\]", "", rest.lstrip(".")))
    if tables and inner:  # in an array of tables, the key `rest` names inside the n-th table
        for number, line in enumerate(text.split("\n")[start:], start=start + 1):
            if _HEADER.match(line):
                break
            if (m := _KEYLINE.match(line)) and _split_key(m.group("key"))[:1] == inner[:1]:
                return number
    return start


@functools.lru_cache(maxsize=16)
def _element_starts(text: str, head: str) -> tuple[tuple[int, ...], bool] | None:
    """The start line of every element of the list at `head`, and whether it is an array of tables.

    Found in one pass and cached: a plugin checking a thousand routes asks
    for the line of each, and must not read the file a thousand times.
    """
    wanted = _split_key(head)
    lines = text.split("\n")  # not splitlines(): the offsets below count every character
    headers = tuple(n for n, line in enumerate(lines, start=1) if _array_header(line) == wanted)
    if headers:
        return headers, True
    key_line = _key_line(text, head)
    if key_line is None:
        return None
    m = _KEYLINE.match(lines[key_line - 1])
    if m is None or _split_key(m.group("key"))[-1:] != wanted[-1:]:
        return None  # the list is inside an inline table: its key's line is the best answer
    offset = sum(len(line) + 1 for line in lines[: key_line - 1]) + m.end()
    starts = _scan_array(text, offset, key_line)
    return None if starts is None else (tuple(starts), False)


def _array_header(line: str) -> list[str] | None:
    """The path of a ``[[path]]`` line, else None."""
    m = _HEADER.match(line)
    if m is None or not line.lstrip().startswith("[["):
        return None
    return _split_key(m.group("path"))


_TOKEN = re.compile(
    r'"""(?:\\(?:[\s\S]|\Z)|[^\\])*?(?:"""|\Z)'  # a multi-line basic string (unterminated: to the end)
    r"|'''[\s\S]*?(?:'''|\Z)"  # a multi-line literal string
    r'|"(?:\\(?:[\s\S]|\Z)|[^"\\])*"?'  # a basic string
    r"|'[^']*'?"  # a literal string
    r"|#[^\n]*|[\s\S]"  # a comment, or one character
)


def _scan_array(text: str, pos: int, line: int) -> list[int] | None:
    """From just after `key =`, walk a TOML array: the line where each element starts (None: not an array)."""
    depth = 0
    expecting = False
    starts: list[int] = []
    for token in _TOKEN.findall(text, pos):
        c = token[0]
        if c in "# \t\r\n":
            line += c == "\n"
            continue
        if depth == 0 and c != "[":
            return None  # not an array
        if depth == 1 and expecting and c not in ",]":
            starts.append(line)
            expecting = False
        if c in "[{":
            depth += 1
            expecting = expecting or depth == 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return starts
        elif c == "," and depth == 1:
            expecting = True
        line += token.count("\n")  # a string over several lines
    return starts  # unterminated (tomllib would have refused it): what was seen


def _line_from_message(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None

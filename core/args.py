"""Checking the "args" map of a request, exactly as it came off the wire.

The core trusts nothing a client sends: every reader here either returns a
value of the promised type and range or raises ``MgmError`` with
``ERROR_INVALID_PARAMETER`` (87) and a sentence naming the argument.  The
core reads all arguments of a request before it changes anything, which is
how a refused request leaves no trace.

Addresses are dotted-quad strings on the wire and ints inside the core (an
int is cheaper to store, compare and order than a string).  Only the strict
form is accepted: four decimal numbers 0-255 without leading zeros, so that
every address has exactly one spelling and ``format_addr(parse_addr(s)) == s``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mgm.bus.status import invalid

UINT32_MAX = 0xFFFFFFFF  # also the mask 255.255.255.255
MULTICAST_NET = 0xE0000000  # 224.0.0.0/4
MULTICAST_MASK = 0xF0000000

_BYTE = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD = re.compile(rf"{_BYTE}\.{_BYTE}\.{_BYTE}\.{_BYTE}", re.ASCII)
# Address caches.  A request carries its addresses as strings and events carry
# them back as strings, so the same addresses are parsed and formatted again
# and again; a miss costs ~1 us (parse) or ~0.8 us (format), a hit ~0.1 us.  The
# two dicts are filled together and share their str and int objects, so an
# address costs two dict slots plus one str and one int (~170 bytes) however
# often it is seen.  The bound covers the working set of a core with 1M
# memberships (~200k distinct addresses); at the bound (a client sending
# random addresses, or a larger core) both are emptied and refill: slower,
# never larger.  Full: ~45 MiB.
ADDR_CACHE_MAX = 1 << 18
_PARSED: dict[str, int] = {}
_FORMATTED: dict[int, str] = {}


def _remember(s: str, n: int) -> None:
    if len(_PARSED) >= ADDR_CACHE_MAX or len(_FORMATTED) >= ADDR_CACHE_MAX:
        _PARSED.clear()
        _FORMATTED.clear()
    _PARSED[s] = n
    _FORMATTED[n] = s


def parse_addr(value: object, what: str) -> int:
    """A dotted-quad string as an int, or ERROR_INVALID_PARAMETER."""
    if type(value) is not str:
        raise invalid(f"{what} must be a dotted-quad string, not {type(value).__name__}")
    cached = _PARSED.get(value)
    if cached is not None:
        return cached
    if _DOTTED_QUAD.fullmatch(value) is None:
        raise invalid(f"{what} {value[:40]!r} is not a dotted-quad address")
    a, b, c, d = value.split(".")  # each 0-255, by the pattern
    n = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
    _remember(value, n)
    return n


def format_addr(n: int) -> str:
    """The dotted-quad spelling of an address int (cached: the same addresses recur)."""
    s = _FORMATTED.get(n)
    if s is None:
        s = f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        _remember(s, n)
    return s


def is_multicast(n: int) -> bool:
    return (n & MULTICAST_MASK) == MULTICAST_NET


def req_int(args: Mapping[str, Any], key: str, lo: int = 0, hi: int = UINT32_MAX) -> int:
    """An int argument in [lo, hi]; a bool is not an int here."""
    if key not in args:
        raise invalid(f"missing argument {key!r}")
    value = args[key]
    if type(value) is not int:
        raise invalid(f"{key} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise invalid(f"{key} {value} is outside {lo}..{hi}")
    return value


def opt_int(args: Mapping[str, Any], key: str, lo: int = 0, hi: int = UINT32_MAX) -> int | None:
    if args.get(key) is None:
        return None
    return req_int(args, key, lo, hi)


def req_addr(args: Mapping[str, Any], key: str) -> int:
    if key not in args:
        raise invalid(f"missing argument {key!r}")
    return parse_addr(args[key], key)


def _typed(args: Mapping[str, Any], key: str, kinds: tuple[type, ...], noun: str) -> Any:
    """The argument, of exactly one of `kinds` (a bool is no int, an int no float); not for hot paths."""
    if key not in args:
        raise invalid(f"missing argument {key!r}")
    value = args[key]
    if type(value) not in kinds:
        raise invalid(f"{key} must be {noun}, not {type(value).__name__}")
    return value


def req_bool(args: Mapping[str, Any], key: str) -> bool:
    value: bool = _typed(args, key, (bool,), "a bool")
    return value


def req_str(args: Mapping[str, Any], key: str, max_len: int = 256) -> str:
    value: str = _typed(args, key, (str,), "a string")
    if len(value) > max_len:
        raise invalid(f"{key} is longer than {max_len} characters")
    return value


def req_number(args: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    """A positive duration in seconds: int or float (not bool, not NaN), lo < value <= hi."""
    value: float = _typed(args, key, (int, float), "a number")
    if not lo < value <= hi:  # also false for NaN
        raise invalid(f"{key} {value} is outside ({lo}, {hi}]")
    return float(value)


def req_list(args: Mapping[str, Any], key: str, max_len: int = 65536) -> list[Any]:
    value: list[Any] = _typed(args, key, (list,), "a list")
    if len(value) > max_len:
        raise invalid(f"{key} has more than {max_len} entries")
    return value


def req_map(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(f"{what} must be a map, not {type(value).__name__}")
    return value


def req_interface(args: Mapping[str, Any]) -> tuple[int, str]:
    """(if_index, next_hop) with next_hop in its one canonical spelling."""
    if_index = req_int(args, "if_index")
    next_hop = args.get("next_hop")
    parse_addr(next_hop, "next_hop")
    assert isinstance(next_hop, str)
    return if_index, next_hop


def req_source_group(args: Mapping[str, Any]) -> tuple[int, int]:
    """An exact (S,G): the source a unicast address other than 0.0.0.0, the group multicast."""
    source = req_addr(args, "source")
    group = req_addr(args, "group")
    if source == 0:
        raise invalid("source must be an exact address here, not 0.0.0.0")
    if is_multicast(source):
        raise invalid(f"source {format_addr(source)} is a multicast address")
    if not is_multicast(group):
        raise invalid(f"group {format_addr(group)} is not in 224.0.0.0/4")
    return source, group


def req_membership_key(args: Mapping[str, Any]) -> tuple[int, int]:
    """(source, group) of a membership with its masks checked.

    A mask is 0.0.0.0 (wildcard, address 0.0.0.0) or 255.255.255.255 (an exact,
    non-zero address).  Allowed shapes: (S,G), (*,G) and (*,*); (S,*) is refused.
    """
    source = req_addr(args, "source")
    source_mask = req_addr(args, "source_mask")
    group = req_addr(args, "group")
    group_mask = req_addr(args, "group_mask")
    _check_mask(source, source_mask, "source")
    _check_mask(group, group_mask, "group")
    if group == 0:
        if source != 0:
            raise invalid("an exact source with the wildcard group (S,*) is not a membership MGM knows")
    elif not is_multicast(group):
        raise invalid(f"group {format_addr(group)} is not in 224.0.0.0/4")
    if source != 0 and is_multicast(source):
        raise invalid(f"source {format_addr(source)} is a multicast address")
    return source, group


def _check_mask(addr: int, mask: int, what: str) -> None:
    if mask == 0:
        if addr != 0:
            raise invalid(f"{what}_mask 0.0.0.0 goes only with {what} 0.0.0.0")
    elif mask == UINT32_MAX:
        if addr == 0:
            raise invalid(f"{what} 0.0.0.0 is the wildcard and takes {what}_mask 0.0.0.0")
    else:
        raise invalid(f"{what}_mask must be 0.0.0.0 or 255.255.255.255, not {format_addr(mask)}")

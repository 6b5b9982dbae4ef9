"""The allow-list in the configuration and the per-key check (sans-I/O: no sockets)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mgm.bus.status import MgmError, Status
from mgm.core.manager.acl import Acl
from mgm.core.runtime.config import ConfigError, loads

KEY_A = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
KEY_B = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"

CONFIG = f"""
[manager]
curve_secret_key = "keys/manager.key_secret"
curve_server_public_key = "{KEY_B}"

[[manager.clients]]
name = "pim-east"
public_key = "{KEY_A}"
protocol_ids = [21, 22]
interfaces = ["eth3", 7, {{interface = 9, next_hop = "10.0.0.2"}}]

[[manager.clients]]
name = "watcher"
public_key = "{KEY_B}"
"""


def acl(if_index: Callable[[str], int | None] = {"eth3": 3}.get) -> Acl:
    return Acl(loads(CONFIG, "/etc/mgm/mgm.toml").manager.clients, if_index=if_index)


def refused(a: Acl, user: str | None, op: str, args: dict[str, object], conn: bytes = b"c1") -> str:
    with pytest.raises(MgmError) as info:
        a.check(conn, user, op, args)
    assert info.value.status == Status.ERROR_ACCESS_DENIED
    return info.value.message


def test_the_config_shape() -> None:
    m = loads(CONFIG, "/etc/mgm/mgm.toml").manager
    assert str(m.curve_secret_key) == "/etc/mgm/keys/manager.key_secret"  # relative to the file
    assert m.curve_server_public_key == KEY_B.encode()
    east, watcher = m.clients
    assert (east.name, east.public_key, east.protocol_ids) == ("pim-east", KEY_A.encode(), frozenset({21, 22}))
    assert [(r.name_or_index, r.next_hop) for r in east.interfaces] == [("eth3", "0.0.0.0"), (7, "0.0.0.0"),
                                                                        (9, "10.0.0.2")]
    assert (watcher.protocol_ids, watcher.interfaces) == (frozenset(), ())


@pytest.mark.parametrize(("replace", "with_", "key_path", "line", "message"), [
    ("protocol_ids = [21, 22]", "protocol_ids = [21, -1]", "manager.clients[0].protocol_ids[1]", 9, "integer"),
    (f'public_key = "{KEY_A}"', 'public_key = "short"', "manager.clients[0].public_key", 8, "z85"),
    ('name = "watcher"', 'name = "pim-east"', "manager.clients[1].name", 13, "the same name"),
    (f'public_key = "{KEY_B}"\n', f'public_key = "{KEY_A}"\n', "manager.clients[1].public_key", 14, "the same"),
    ('name = "watcher"', 'name = "watcher"\nrole = "x"', "manager.clients[1].role", 14, "unknown key"),
    ('interfaces = ["eth3"', 'interfaces = [true', "manager.clients[0].interfaces[0]", 10, "interface name"),
    ('curve_server_public_key', 'curve_server_public_kee', "manager.curve_server_public_kee", 4, "unknown key"),
])
def test_config_mistakes_name_file_key_and_line(replace: str, with_: str, key_path: str, line: int,
                                                message: str) -> None:
    text = CONFIG.replace(replace, with_)
    assert text != CONFIG
    with pytest.raises(ConfigError) as info:
        loads(text, "mgm.toml")
    assert (info.value.source, info.value.key_path, info.value.line) == ("mgm.toml", key_path, line)
    assert message in info.value.message


def test_a_plugin_table_names_its_key_file() -> None:
    config = loads('[plugins.static]\ncurve_key = "static.key_secret"\n', "/etc/mgm/remote.toml")
    assert str(config.plugin("static").curve_key) == "/etc/mgm/static.key_secret"


def test_protocol_ids_per_key() -> None:
    a = acl()
    a.check(b"c1", "pim-east", "register_protocol", {"protocol_id": 22, "component_id": 1})
    message = refused(a, "pim-east", "register_protocol", {"protocol_id": 10, "component_id": 1})
    assert message == "key 'pim-east' may not register protocol id 10 (allowed: 21, 22)"
    assert "allowed: none" in refused(a, "watcher", "register_protocol", {"protocol_id": 21}, b"c2")
    assert a.denied == {("pim-east", "register_protocol"): 1, ("watcher", "register_protocol"): 1}


def test_interfaces_per_key_by_index_by_name_and_next_hop() -> None:
    a = acl()
    for if_index, next_hop in ((3, "0.0.0.0"), (7, "0.0.0.0"), (9, "10.0.0.2")):
        a.check(b"c1", "pim-east", "take_interface_ownership", {"handle": 1, "if_index": if_index,
                                                                "next_hop": next_hop})
    for if_index, next_hop in ((4, "0.0.0.0"), (7, "10.0.0.9"), (9, "0.0.0.0")):
        message = refused(a, "pim-east", "take_interface_ownership", {"handle": 1, "if_index": if_index,
                                                                      "next_hop": next_hop})
        assert f"may not own interface {if_index}/{next_hop}" in message
        assert "allowed: eth3, 7, 9/10.0.0.2" in message


def test_a_name_is_looked_up_when_asked_and_a_missing_interface_matches_nothing() -> None:
    names: dict[str, int] = {}
    a = acl(names.get)
    refused(a, "pim-east", "take_interface_ownership", {"handle": 1, "if_index": 3, "next_hop": "0.0.0.0"})
    names["eth3"] = 3  # the interface appeared after the manager started
    a.check(b"c1", "pim-east", "take_interface_ownership", {"handle": 1, "if_index": 3, "next_hop": "0.0.0.0"})


def test_other_ops_and_malformed_args_pass_to_the_core() -> None:
    """The core answers bad args with 87; the gate refuses claims only, and other ops act on own handles."""
    a = acl()
    a.check(b"c1", "watcher", "sync", {"stream": "state"})
    a.check(b"c1", "watcher", "register_protocol", {"protocol_id": "21"})
    a.check(b"c1", "watcher", "take_interface_ownership", {"handle": 1, "if_index": None})
    a.check(b"c1", "watcher", "add_group_membership", {"handle": 1, "if_index": 99})
    assert a.denied == {}


def test_no_key_or_an_unlisted_name_is_refused_everything() -> None:
    a = acl()
    assert "no allowed CURVE key" in refused(a, None, "ping", {})
    assert "no allowed CURVE key" in refused(a, "someone", "ping", {})


def test_a_connection_keeps_its_first_key() -> None:
    a = acl()
    a.check(b"shared-id", "pim-east", "ping", {})
    assert "belongs to key 'pim-east'" in refused(a, "watcher", "ping", {}, b"shared-id")
    a.check(b"shared-id", "pim-east", "ping", {})

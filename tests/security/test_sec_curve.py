"""A manager on loopback tcp with CURVE: who gets in, and what each key may claim."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import zmq
from sec_support import ALLOWED_INDEX, ROUTING_PROTOCOL, Keys, TcpManager, dealer, log_has, reply_to, start_tcp_manager

from mgm.bus.sockets import secure
from mgm.bus.status import Status
from mgm.plugins.testing import wait_for

SILENCE = 1.5
"""How long a refused client waits for a reply that must not come (bounded; the manager answers in ms)."""


def register(protocol_id: int, component_id: int = 1) -> dict[str, int]:
    return {"protocol_id": protocol_id, "component_id": component_id}


def take(handle: int, if_index: int, next_hop: str = "0.0.0.0") -> dict[str, object]:
    return {"handle": handle, "if_index": if_index, "next_hop": next_hop}


def protocols(m: TcpManager) -> list[tuple[int, int]]:
    return sorted((p["protocol_id"], p["component_id"]) for p in m.state()["protocols"])


def test_a_client_without_curve_gets_no_answer_and_is_logged(tcp_manager: TcpManager) -> None:
    assert reply_to(tcp_manager.api, None, "ping", timeout=SILENCE) is None
    assert reply_to(tcp_manager.api, None, "register_protocol", register(ROUTING_PROTOCOL), timeout=SILENCE) is None
    assert "WARNING" in log_has(tcp_manager.proc, "refused a tcp connection (CURVE handshake failed)")
    assert protocols(tcp_manager) == []


def test_an_unknown_key_is_refused_by_zap_and_logged(tcp_manager: TcpManager) -> None:
    stranger = tcp_manager.keys.curve("stranger")
    assert reply_to(tcp_manager.api, stranger, "register_protocol", register(ROUTING_PROTOCOL),
                    timeout=SILENCE) is None
    log_has(tcp_manager.proc, f"refused a tcp connection (unknown CURVE key): {tcp_manager.keys.public['stranger']}")
    assert protocols(tcp_manager) == []


def test_an_unknown_key_gets_no_events(tcp_manager: TcpManager) -> None:
    """The event endpoint has the same gate: a stranger's subscription never sees the heartbeat."""
    ctx = zmq.Context.instance()
    subs = []
    try:
        for key in ("stranger", "observer"):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"hb")
            secure(sub, tcp_manager.events, tcp_manager.keys.curve(key), server=False)
            sub.connect(tcp_manager.events)
            subs.append(sub)
        assert subs[1].poll(5000), "an allowed key gets the heartbeat"
        assert not subs[0].poll(int(SILENCE * 1000)), "a stranger got an event"
    finally:
        for sub in subs:
            sub.close(0)


def test_a_wrong_server_key_gets_no_answer(tcp_manager: TcpManager) -> None:
    """A client trusting another server key (a man in the middle's, say) never completes the handshake."""
    from mgm.bus.auth import client_curve

    keys = tcp_manager.keys
    wrong = client_curve(keys.secret("east"), keys.public["stranger"].encode())
    assert reply_to(tcp_manager.api, wrong, "ping", timeout=SILENCE) is None


def test_a_known_key_may_not_register_another_protocol(tcp_manager: TcpManager) -> None:
    reply = tcp_manager.request("east", "register_protocol", register(10))
    assert reply is not None
    assert reply["status"] == Status.ERROR_ACCESS_DENIED == 5
    assert reply["error"] == "ERROR_ACCESS_DENIED"
    assert "may not register protocol id 10" in reply["message"] and f"allowed: {ROUTING_PROTOCOL}" in reply["message"]
    log = log_has(tcp_manager.proc, "access denied: register_protocol: key 'east' may not register protocol id 10")
    assert "WARNING" in log
    assert protocols(tcp_manager) == []  # the refusal changed nothing


def test_an_observer_key_may_read_but_claim_nothing(tcp_manager: TcpManager) -> None:
    reply = tcp_manager.request("observer", "register_protocol", register(ROUTING_PROTOCOL))
    assert reply is not None and reply["status"] == Status.ERROR_ACCESS_DENIED
    assert "allowed: none" in reply["message"]
    assert protocols(tcp_manager) == []


def test_a_known_key_may_not_take_an_interface_it_is_not_given(tcp_manager: TcpManager) -> None:
    with dealer(tcp_manager.api, tcp_manager.keys.curve("east")) as sock:
        reply = reply_to(tcp_manager.api, None, "register_protocol", register(ROUTING_PROTOCOL), sock=sock)
        assert reply is not None and reply["status"] == 0, reply
        handle = reply["result"]["handle"]
        for if_index, next_hop in ((8, "0.0.0.0"), (ALLOWED_INDEX, "10.0.0.2")):
            refused = reply_to(tcp_manager.api, None, "take_interface_ownership", take(handle, if_index, next_hop),
                               sock=sock)
            assert refused is not None and refused["status"] == Status.ERROR_ACCESS_DENIED, refused
            assert f"may not own interface {if_index}/{next_hop}" in refused["message"]
        log_has(tcp_manager.proc, "access denied: take_interface_ownership: key 'east' may not own interface 8/0.0.0.0")
        # what the key is given: an index, and a name the manager looks up on its own host
        for if_index in (ALLOWED_INDEX, socket.if_nametoindex("lo")):
            ok = reply_to(tcp_manager.api, None, "take_interface_ownership", take(handle, if_index), sock=sock)
            assert ok is not None and ok["status"] == 0, ok
        owned = sorted(i["if_index"] for i in tcp_manager.state()["interfaces"])
        assert owned == sorted([ALLOWED_INDEX, socket.if_nametoindex("lo")])


def test_a_key_cannot_take_over_another_keys_connection(tcp_manager: TcpManager) -> None:
    """ROUTER_HANDOVER lets a reconnect keep its identity; another key presenting it is refused everything."""
    identity = b"east-plugin-1"
    with dealer(tcp_manager.api, tcp_manager.keys.curve("east"), identity) as east:
        reply = reply_to(tcp_manager.api, None, "register_protocol", register(ROUTING_PROTOCOL), sock=east)
        assert reply is not None and reply["status"] == 0, reply
        handle = reply["result"]["handle"]
    with dealer(tcp_manager.api, tcp_manager.keys.curve("west"), identity) as west:
        stolen = reply_to(tcp_manager.api, None, "take_interface_ownership", take(handle, 8), sock=west)
        assert stolen is not None and stolen["status"] == Status.ERROR_ACCESS_DENIED, stolen
        assert "belongs to key 'east'" in stolen["message"]
    assert tcp_manager.state()["interfaces"] == []


@pytest.mark.parametrize("key", ["east", "west"])
def test_a_known_key_does_what_it_may(tcp_manager: TcpManager, key: str) -> None:
    protocol_id, if_index = (ROUTING_PROTOCOL, ALLOWED_INDEX) if key == "east" else (22, 8)
    with dealer(tcp_manager.api, tcp_manager.keys.curve(key)) as sock:
        reply = reply_to(tcp_manager.api, None, "register_protocol", register(protocol_id), sock=sock)
        assert reply is not None and reply["status"] == 0, reply
        ok = reply_to(tcp_manager.api, None, "take_interface_ownership", take(reply["result"]["handle"], if_index),
                      sock=sock)
        assert ok is not None and ok["status"] == 0, ok
        assert protocols(tcp_manager) == [(protocol_id, 1)]


def test_refusals_are_counted_in_the_metrics(ipc_dir: Path, keys: Keys, procs: list[Any]) -> None:
    import re
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    m = start_tcp_manager(ipc_dir, keys, procs, "--metrics", "127.0.0.1:0")
    url = re.search(r"metrics at (http://\S+)", log_has(m.proc, "metrics at http://"))
    assert url is not None
    assert reply_to(m.api, None, "ping", timeout=SILENCE) is None
    assert reply_to(m.api, keys.curve("stranger"), "ping", timeout=SILENCE) is None
    for _ in range(2):
        denied = m.request("observer", "register_protocol", register(ROUTING_PROTOCOL))
        assert denied is not None and denied["status"] == Status.ERROR_ACCESS_DENIED

    def refused() -> dict[str, float]:
        with urllib.request.urlopen(url.group(1), timeout=5) as page:
            text = page.read().decode()
        return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "mgm_tcp_refused" for s in f.samples if s.name.endswith("_total")}

    # a client that retries its handshake is refused (and counted) each time: at least once each
    counts = wait_for(lambda: refused().get("bad_handshake", 0) >= 1 and refused(), 10, "the bad_handshake count")
    assert counts["bad_handshake"] >= 1 and counts["unknown_key"] >= 1
    assert counts["access_denied"] == 2

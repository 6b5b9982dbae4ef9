"""`mgm manager --metrics`: the Prometheus endpoint, scraped over HTTP from a live manager process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import closing
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mgm.bus.status import MgmError
from mgm.core.manager.metrics import parse_address
from mgm.plugins.testing import ManagerProc, MgmBus, wait_for


def metrics_url(manager: ManagerProc) -> str:
    """The URL the manager logged (it was asked for port 0, so only it knows the port)."""

    def logged() -> str | None:
        records = (json.loads(line) for line in manager.log().splitlines())
        return next((str(r["metrics_url"]) for r in records if "metrics_url" in r), None)

    return wait_for(logged, 10, "the manager to log its metrics address")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_endpoint_counts_requests_events_removals_and_reads_the_core(mgm_bus: MgmBus) -> None:
    manager = mgm_bus.start_manager(metrics="127.0.0.1:0", metrics_top_mfes=2, liveness=1.5, log_format="json")
    url = metrics_url(manager)
    assert url.startswith("http://127.0.0.1:")
    observer = mgm_bus.client  # subscribed to every topic, registers nothing yet

    # a client that registers and falls silent is removed: one heartbeat miss
    with closing(type(observer)(manager.api, manager.events)) as silent:
        silent.register(65000, 9, "silent")
    observer.wait_for_event(lambda e: e["type"] == "protocol_deregistered" and e["protocol_id"] == 65000, 10)

    handle = observer.register(65100, 1, "metrics-test")
    for if_index in (1, 2):
        observer.request("take_interface_ownership", {"handle": handle, "if_index": if_index, "next_hop": "0.0.0.0"})
    member = {"handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
              "group_mask": "255.255.255.255", "if_index": 2, "next_hop": "0.0.0.0", "flags": 1}  # fmt: skip
    observer.request("add_group_membership", member)
    with pytest.raises(MgmError):
        observer.request("add_group_membership", {**member, "group": "10.0.0.1"})  # not multicast: 87
    with pytest.raises(MgmError):
        observer.request("no_such_op", {})  # 50, counted as op "other"
    sources = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for source in sources:  # our own rpf and creation questions go unanswered: defaults at the deadline
        observer.request("new_packet", {"handle": handle, "source": source, "group": "239.1.1.1", "if_index": 1,
                                        "next_hop": "0.0.0.0"})  # fmt: skip
    packets = {"10.0.0.1": 5, "10.0.0.2": 700, "10.0.0.3": 90}
    observer.request("mfe_counters", {"handle": handle, "entries": [
        {"source": s, "group": "239.1.1.1", "in_packets": n, "in_bytes": n * 100, "wrong_if_packets": 1}
        for s, n in packets.items()]})  # fmt: skip
    observer.request("set_protocol_status", {"handle": handle, "status": {
        "neighbors": [{"address": "10.0.0.9"}], "metrics": {"neighbors": 1, "hello_received": 42, "note": "text"}}})
    observer.state()  # one resync of the state stream
    observer.heartbeat()

    samples = scrape(url)
    ok = "NO_ERROR"
    assert value(samples, "mgm_requests_total", op="register_protocol", status=ok) == 2
    assert value(samples, "mgm_requests_total", op="take_interface_ownership", status=ok) == 2
    assert value(samples, "mgm_requests_total", op="add_group_membership", status=ok) == 1
    assert value(samples, "mgm_requests_total", op="add_group_membership", status="ERROR_INVALID_PARAMETER") == 1
    assert value(samples, "mgm_requests_total", op="other", status="ERROR_NOT_SUPPORTED") == 1
    assert value(samples, "mgm_requests_total", op="new_packet", status=ok) == 3  # deferred, counted at completion
    assert value(samples, "mgm_requests_total", op="sync", status=ok) == 1
    assert value(samples, "mgm_events_total", type="mfe_created") == 3
    assert value(samples, "mgm_events_total", type="protocol_registered") == 2
    assert value(samples, "mgm_events_total", type="protocol_deregistered") == 1
    assert value(samples, "mgm_events_total", type="membership_added") == 1
    assert value(samples, "mgm_clients_removed_total", reason="silence") == 1
    assert value(samples, "mgm_clients_removed_total", reason="connection_lost") == 0
    assert value(samples, "mgm_syncs_total", stream="state") == 1
    assert value(samples, "mgm_protocols") == 1
    assert value(samples, "mgm_interfaces") == 2
    assert value(samples, "mgm_memberships") == 1
    assert value(samples, "mgm_mfes") == 3
    assert value(samples, "mgm_mfes_pending") == 0
    # the bound: series only for the 2 busiest MFEs; the sums cover all three
    per_mfe = {dict(labels)["source"]: v for (name, labels), v in samples.items() if name == "mgm_mfe_in_packets_total"}
    assert per_mfe == {"10.0.0.2": 700, "10.0.0.3": 90}
    assert value(samples, "mgm_mfe_in_bytes_total", source="10.0.0.2", group="239.1.1.1") == 70000
    assert value(samples, "mgm_mfes_in_packets") == sum(packets.values())
    assert value(samples, "mgm_mfes_in_bytes") == 100 * sum(packets.values())
    assert value(samples, "mgm_mfes_wrong_if_packets") == 3
    assert value(samples, "mgm_mfe_series_limit") == 2
    # a protocol's status: each number of its metrics map (a text is not a number: left out)
    status = {dict(labels)["metric"]: v for (name, labels), v in samples.items() if name == "mgm_protocol"}
    assert status == {"neighbors": 1, "hello_received": 42}
    labels = {"protocol": "65100", "component": "1", "name": "metrics-test", "metric": "neighbors"}
    assert samples[("mgm_protocol", tuple(sorted(labels.items())))] == 1

    # counters read at scrape time: another request shows in the next scrape
    observer.request("release_interface_ownership", {"handle": handle, "if_index": 2, "next_hop": "0.0.0.0"})
    again = scrape(url)
    assert value(again, "mgm_requests_total", op="release_interface_ownership", status=ok) == 1
    assert value(again, "mgm_interfaces") == 1
    assert value(again, "mgm_memberships") == 0

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=5)
    assert refused.value.code == 404


def test_metrics_off_by_default_and_bad_address_refused(mgm_bus: MgmBus) -> None:
    assert "metrics at" not in mgm_bus.start_manager().log()
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("9100")
    with pytest.raises(ValueError, match="port"):
        parse_address("127.0.0.1:http")
    assert parse_address("[::1]:9100") == ("::1", 9100)

"""The process's link watcher without a socket: netlink messages in, what each subscriber hears out."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import Mock, call

from mgm.plugins.links import Address, Link, LinkSubscriber, LinkWatcher, watcher

UP = 0x1 | 0x10000


def link(event: str, index: int, name: str, flags: int = UP, family: int = 0) -> dict[str, Any]:
    return {"event": event, "index": index, "ifname": name, "flags": flags, "family": family}


def addr(event: str, index: int, local: str, flags: int = 0) -> dict[str, Any]:
    return {"event": event, "index": index, "IFA_LOCAL": local, "IFA_ADDRESS": local, "prefixlen": 24,
            "flags": flags}  # fmt: skip


def test_links_are_told_when_they_change_and_a_repeat_or_a_bridge_ports_message_is_not() -> None:
    w, sub = LinkWatcher(), Mock(LinkSubscriber)
    w.subscribers.append(sub)
    w.handle(link("RTM_NEWLINK", 3, "r1"))
    w.handle(link("RTM_NEWLINK", 3, "r1", flags=UP | 0x100))  # another flag (PROMISC) changed: nothing to tell
    assert w.links[3].flags == UP | 0x100  # kept all the same
    w.handle(link("RTM_DELLINK", 3, "r1", family=7))  # AF_BRIDGE: r1 left a bridge, it still exists
    w.handle(link("RTM_NEWLINK", 3, "r1", flags=0x1))  # carrier lost
    w.handle(link("RTM_NEWLINK", 3, "wan", flags=0x1))
    w.handle(link("RTM_DELLINK", 3, "wan", flags=0x1))
    assert sub.mock_calls == [
        call.link_changed(Link(3, "r1", True), None),
        call.link_changed(Link(3, "r1", False), Link(3, "r1", True)),
        call.link_changed(Link(3, "wan", False), Link(3, "r1", False)),
        call.link_removed(Link(3, "wan", False)),
    ]
    assert w.links == {}


def test_addresses_are_kept_in_the_kernels_order_and_a_promoted_secondary_is_told_again() -> None:
    w, sub = LinkWatcher(), Mock(LinkSubscriber)
    w.subscribers.append(sub)
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.1"))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2", flags=0x1))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2", flags=0x1))  # again: nothing new
    w.handle(addr("RTM_DELADDR", 3, "10.0.0.1"))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2"))  # promoted to primary
    w.handle(addr("RTM_DELADDR", 3, "10.9.9.9"))  # never seen: nothing to tell
    primary, secondary = Address(3, "10.0.0.1", "10.0.0.1", 24, False), Address(3, "10.0.0.2", "10.0.0.2", 24, True)
    promoted = Address(3, "10.0.0.2", "10.0.0.2", 24, False)
    assert sub.mock_calls == [call.address_added(primary), call.address_added(secondary),
                              call.address_removed(primary), call.address_added(promoted)]  # fmt: skip
    assert w.addresses == {3: {("10.0.0.2", 24): promoted}}
    w.handle(link("RTM_DELLINK", 3, "r1"))
    assert w.addresses == {}


def test_a_subscriber_that_raises_is_logged_and_the_others_still_hear(caplog: Any) -> None:
    w, broken, sub = LinkWatcher(), Mock(LinkSubscriber), Mock(LinkSubscriber)
    broken.link_changed.side_effect = RuntimeError("boom")
    w.subscribers += [broken, sub]
    w.handle(link("RTM_NEWLINK", 3, "r1"))
    assert sub.mock_calls == [call.link_changed(Link(3, "r1", True), None)]
    assert "link_changed of Mock failed" in caplog.text


def test_one_watcher_per_loop_and_a_late_subscriber_hears_the_dump_at_once() -> None:
    sub = Mock(LinkSubscriber)

    async def main() -> LinkWatcher:
        w = watcher()
        assert watcher() is w
        w.ready = True
        w.subscribe(sub)  # the dump is in: no socket opened, the subscriber hears it now
        return w

    first = asyncio.run(main())
    assert sub.mock_calls == [call.dumped(first)]
    assert asyncio.run(main()) is not first  # another loop, another watcher

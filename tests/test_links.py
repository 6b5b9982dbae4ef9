"""The process's link watcher without a socket: netlink messages in, what each subscriber hears out."""

from __future__ import annotations

import asyncio
from typing import Any

from mgm.plugins.links import Address, Link, LinkSubscriber, LinkWatcher, watcher

UP = 0x1 | 0x10000


class Heard(LinkSubscriber):
    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def dumped(self, watcher: LinkWatcher) -> None:
        self.heard.append(("dumped", dict(watcher.links)))

    def link_changed(self, link: Link, before: Link | None) -> None:
        self.heard.append(("changed", link, before))

    def link_removed(self, link: Link) -> None:
        self.heard.append(("removed", link))

    def address_added(self, address: Address) -> None:
        self.heard.append(("address+", address))

    def address_removed(self, address: Address) -> None:
        self.heard.append(("address-", address))


def link(event: str, index: int, name: str, flags: int = UP, family: int = 0) -> dict[str, Any]:
    return {"event": event, "index": index, "ifname": name, "flags": flags, "family": family}


def addr(event: str, index: int, local: str, flags: int = 0, peer: str | None = None) -> dict[str, Any]:
    return {"event": event, "index": index, "IFA_LOCAL": local, "IFA_ADDRESS": peer or local, "prefixlen": 24,
            "flags": flags}  # fmt: skip


def test_links_are_told_when_they_change_and_a_repeat_or_a_bridge_ports_message_is_not() -> None:
    w, sub = LinkWatcher(), Heard()
    w.subscribers.append(sub)
    w.handle(link("RTM_NEWLINK", 3, "r1"))
    w.handle(link("RTM_NEWLINK", 3, "r1"))  # another attribute changed: nothing a subscriber sees
    w.handle(link("RTM_DELLINK", 3, "r1", family=7))  # AF_BRIDGE: r1 left a bridge, it still exists
    w.handle(link("RTM_NEWLINK", 3, "r1", flags=0x1))  # carrier lost
    w.handle(link("RTM_NEWLINK", 3, "wan", flags=0x1))
    w.handle(link("RTM_DELLINK", 3, "wan", flags=0x1))
    assert sub.heard == [
        ("changed", Link(3, "r1", True), None),
        ("changed", Link(3, "r1", False), Link(3, "r1", True)),
        ("changed", Link(3, "wan", False), Link(3, "r1", False)),
        ("removed", Link(3, "wan", False)),
    ]
    assert w.links == {}


def test_addresses_are_kept_in_the_kernels_order_and_a_promoted_secondary_is_told_again() -> None:
    w, sub = LinkWatcher(), Heard()
    w.subscribers.append(sub)
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.1"))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2", flags=0x1))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2", flags=0x1))  # again: nothing new
    w.handle(addr("RTM_DELADDR", 3, "10.0.0.1"))
    w.handle(addr("RTM_NEWADDR", 3, "10.0.0.2"))  # promoted to primary
    w.handle(addr("RTM_DELADDR", 3, "10.9.9.9"))  # never seen: nothing to tell
    primary, secondary = Address(3, "10.0.0.1", "10.0.0.1", 24, False), Address(3, "10.0.0.2", "10.0.0.2", 24, True)
    promoted = Address(3, "10.0.0.2", "10.0.0.2", 24, False)
    assert sub.heard == [("address+", primary), ("address+", secondary), ("address-", primary), ("address+", promoted)]
    assert w.addresses == {3: [promoted]}
    w.handle(link("RTM_DELLINK", 3, "r1"))
    assert w.addresses == {}


def test_a_subscriber_that_raises_is_logged_and_the_others_still_hear(caplog: Any) -> None:
    w, sub = LinkWatcher(), Heard()

    class Broken(LinkSubscriber):
        def link_changed(self, link: Link, before: Link | None) -> None:
            raise RuntimeError("boom")

    w.subscribers += [Broken(), sub]
    w.handle(link("RTM_NEWLINK", 3, "r1"))
    assert sub.heard == [("changed", Link(3, "r1", True), None)]
    assert "link_changed of Broken failed" in caplog.text


def test_one_watcher_per_loop_and_a_late_subscriber_hears_the_dump_at_once() -> None:
    async def main() -> tuple[LinkWatcher, list[tuple[Any, ...]]]:
        w = watcher()
        assert watcher() is w
        w.ready, w.links = True, {3: Link(3, "r1", True)}
        sub = Heard()
        w.subscribe(sub)  # the dump is in: no socket opened, the subscriber hears it now
        return w, sub.heard

    first, heard = asyncio.run(main())
    assert heard == [("dumped", {3: Link(3, "r1", True)})]
    assert asyncio.run(main())[0] is not first  # another loop, another watcher

"""Stand-ins for the proxy's kernel sockets, reporter and manager context, to test its decisions without I/O."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from mgm.bus.status import MgmError, Status
from mgm.core.types import Interface
from mgm.plugins.proxy.upstream import UpstreamError


class FakeKernel:
    """Records the operations the plugin sends to the upstream sockets; refuses the groups in `refuse`."""

    def __init__(self, ifname: str = "up0", if_index: int = 1, refuse: frozenset[str] = frozenset()) -> None:
        self.ifname = ifname
        self.if_index = if_index
        self.where: dict[tuple[str, str | None], None] = {}
        self.ops: list[tuple[str, str, str | None]] = []
        self.refuse = refuse
        self.closed = False

    def join(self, group: str, source: str | None) -> None:
        if group in self.refuse:
            raise UpstreamError(105, "no buffer space")
        self.where[(group, source)] = None
        self.ops.append(("join", group, source))

    def leave(self, group: str, source: str | None) -> None:
        del self.where[(group, source)]
        self.ops.append(("leave", group, source))

    def __len__(self) -> int:
        return len(self.where)

    def close(self) -> None:
        self.where.clear()
        self.closed = True


class FakeReporter:
    """Records the changes the plugin would report upstream at once."""

    def __init__(self, ifname: str = "up0", if_index: int = 1) -> None:
        self.ifname = ifname
        self.if_index = if_index
        self.changes: list[tuple[str, Any, Any]] = []
        self.closed = False

    def change(self, group: str, old: Any, new: Any) -> None:
        self.changes.append((group, old, new))

    def close(self) -> None:
        self.closed = True


class Reply:
    """What a context request returns, awaitable like its future: the reply ({}) or the refusal."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def __await__(self) -> Generator[None, None, dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return {}
        yield  # a generator, as __await__ must be


class FakeContext:
    """The calls a plugin makes on its `PluginContext`, in order; `refuse_take` makes take_interface fail."""

    def __init__(self, refuse_take: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse_take = refuse_take
        self.spawned: list[Coroutine[Any, Any, Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Kept for the test to run (``asyncio.run``) or close."""
        self.spawned.append(coro)

    def take_interface(self, interface: Interface) -> Reply:
        self.calls.append(("take", interface))
        if self.refuse_take:
            return Reply(MgmError(Status.ERROR_ALREADY_EXISTS, "interface owned by 10/1"))
        return Reply()

    def release_interface(self, interface: Interface) -> Reply:
        self.calls.append(("release", interface))
        return Reply()

    def add_membership(self, source: str, group: str, interface: Interface) -> Reply:
        self.calls.append(("add", source, group, interface))
        return Reply()

    def delete_membership(self, source: str, group: str, interface: Interface) -> Reply:
        self.calls.append(("delete", source, group, interface))
        return Reply()

    def set_boundaries(self, interface: Interface, ranges: Any) -> Reply:
        self.calls.append(("boundaries", interface, tuple(ranges)))
        return Reply()

"""Stand-ins shared by the tests that run a plugin's host or context without a manager."""

from __future__ import annotations

import asyncio
from typing import Any

from mgm.bus.status import MgmError


class FakeClient:
    """Stands for mgm.bus.client.Client: records every request and answers it a moment later, as from a socket.

    The answer is the refusal in `refuse` for that op, else ``list_mfes`` lists
    `mfes` (one page), else the op's reply in `replies`, else ``{}``.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, MgmError] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.mfes: list[dict[str, Any]] = []
        self.heartbeat_handle: int | None = None

    def request_nowait(self, op: str, args: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self.sent.append((op, args))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        if op in self.refuse:
            loop.call_soon(fut.set_exception, self.refuse[op])
        elif op == "list_mfes":
            loop.call_soon(fut.set_result, {"entries": list(self.mfes), "more": False})
        else:
            loop.call_soon(fut.set_result, dict(self.replies.get(op, {})))
        return fut

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.request_nowait(op, args)

    def ops(self, op: str) -> list[dict[str, Any]]:
        """The arguments of every `op` request sent, in order."""
        return [a for o, a in self.sent if o == op]

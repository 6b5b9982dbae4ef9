"""The one status vocabulary and the one error type of the wire.

Every reply carries a Win32-compatible status (the values RRAS's MGM returns)
and a human sentence.  Code anywhere in mgmbus that refuses something raises
`MgmError`; the server turns it into a reply, the client turns a non-zero reply
back into the same exception, so a plugin author sees one type everywhere.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    NO_ERROR = 0
    ERROR_ACCESS_DENIED = 5
    ERROR_NOT_ENOUGH_MEMORY = 8
    ERROR_NOT_SUPPORTED = 50
    ERROR_INVALID_PARAMETER = 87
    ERROR_INSUFFICIENT_BUFFER = 122
    ERROR_ALREADY_EXISTS = 183
    ERROR_MORE_DATA = 234
    ERROR_NO_MORE_ITEMS = 259
    ERROR_CAN_NOT_COMPLETE = 1003
    ERROR_NOT_FOUND = 1168


class MgmError(Exception):
    """A refused request: a Win32 status and a sentence that says why."""

    def __init__(self, status: Status | int, message: str) -> None:
        try:
            self.status = Status(status)
        except ValueError:  # a peer may send a code we do not know; keep it
            self.status = status  # type: ignore[assignment]
        self.message = message
        super().__init__(f"{self.error_name}: {message}")

    @property
    def error_name(self) -> str:
        return self.status.name if isinstance(self.status, Status) else f"STATUS_{int(self.status)}"


def invalid(message: str) -> MgmError:
    """Shorthand for the most common refusal, ERROR_INVALID_PARAMETER."""
    return MgmError(Status.ERROR_INVALID_PARAMETER, message)

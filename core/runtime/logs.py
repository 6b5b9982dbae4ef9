"""The one logging setup of every mgm process: text or JSON lines on stderr.

Every process (`mgm manager`, `mgm plugin`, `mgm up`, the tools) calls
`setup(level, fmt)` once, first thing.  A record is one line: in text,
``TIME LEVEL [TAG] LOGGER: MESSAGE key=value ...``; in JSON, one object with
``ts`` (epoch seconds), ``level``, ``logger``, ``msg`` and every extra field
the record carries (``exc`` holds a traceback, newlines escaped, so even a
crash is one line).

Extra fields come from ``extra=`` (use `fields()` to name the protocol,
interface, group and source the same way everywhere), so a log shipper can
filter on them without parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def fields(
    *,
    protocol: tuple[Any, Any] | None = None,
    interface: tuple[Any, Any] | None = None,
    group: str | None = None,
    source: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The `extra=` map of a record about these things, each rendered one way: protocol "P/C", interface "I/NH"."""
    pairs = {k: f"{v[0]}/{v[1]}" for k, v in (("protocol", protocol), ("interface", interface)) if v is not None}
    addresses = {k: v for k, v in (("group", group), ("source", source)) if v is not None}
    return {**pairs, **addresses, **more}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got through `extra=`, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the extra fields, and exc if any."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.tag is not None:
            line["process"] = self.tag
        for key, value in extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL [TAG] LOGGER: MESSAGE key=value ...``: the extra fields after the message."""

    def __init__(self, tag: str | None = None) -> None:
        prefix = f"[{tag}] " if tag else ""
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        more = extras(record)
        if not more:
            return text
        tail = " ".join(f"{k}={_text_value(v)}" for k, v in more.items())
        head, sep, rest = text.partition("\n")  # a traceback stays below the first line
        return f"{head} {tail}{sep}{rest}"


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def setup(level: str = "info", fmt: str = "text", *, tag: str | None = None, stream: TextIO | None = None) -> None:
    """Send every record at `level` and above to stderr (or `stream`) as `fmt` lines; replaces earlier handlers.

    `tag` names the process in each line (e.g. the plugin's name, "up"), so
    the interleaved output of `mgm up` stays readable.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if fmt == "json" else TextFormatter(tag))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def setup_from(args: Any, *, tag: str | None = None, level: str | None = None) -> None:
    """`setup` from the common options of the `mgm` command (args.log_level, args.log_format)."""
    setup(level or str(args.log_level), str(args.log_format), tag=tag)

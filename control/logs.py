"""Logging for `ovl-dp`: the text format (the default) or one JSON object per line.

A JSON record has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``message``,
``tap`` once the daemon knows its TAP (set_tap), every field the call passed with
``extra=`` (e.g. ``log.info("ready", extra={"event": "ready", "bridge": "br-int"})``),
and ``exception`` (the formatted traceback) when there is one. json.dumps escapes
newlines, so a multi-line message stays one line.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s ovl-dp[%(process)d] %(levelname)s %(message)s"

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_context: dict[str, Any] = {}
_HANDLER = "ovl-dp"


def set_tap(name: str | None) -> None:
    """Name the TAP in every JSON record from now on (None: no longer)."""
    if name is None:
        _context.pop("tap", None)
    else:
        _context["tap"] = name


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single-line JSON object."""
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        out.update(_context)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class _Handler(logging.StreamHandler):
    """A StreamHandler to the given stream, or to whatever sys.stderr is at the time of each record."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        """The stream records go to."""
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._fixed = value


class OneLineForeign(logging.Filter):
    """Records of libraries that log through the root logger (gRPC's Cython layer, under the etcd client)
    become one line: their traceback is cut to its exception's type and message, never printed whole."""

    FOREIGN = ("grpc",)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record; a foreign library's is made one line that formats (its traceback cut short)."""
        if record.name.split(".", 1)[0] not in self.FOREIGN:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a library's own message may not even format (gRPC's raw address bytes)
            text = f"{record.msg} {record.args!r}"
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = f"{record.name}: {text}" + (f": {type(exc).__name__}: {exc}" if exc is not None else "")
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def setup(verbose: bool = False, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger (again): level from -v, the text or JSON format, to stderr or stream."""
    handler = _Handler(stream)
    handler.addFilter(OneLineForeign())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:  # ours from an earlier call only
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class LoopErrors:
    """An asyncio exception handler for the daemon's loop: one log line per kind of error, no traceback.

    Whatever reaches the loop's handler (an accept that failed with EMFILE under a connection
    flood, a callback that raised) is logged as one warning naming the error, then counted
    quietly for ``interval`` seconds, so that a hostile client cannot fill the log; the
    daemon carries on. ``count`` is how many reached it.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.count = 0
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The handler (loop.set_exception_handler(LoopErrors(log)))."""
        self.count += 1
        exc = context.get("exception")
        what = str(context.get("message") or "error on the event loop")
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        key = f"{what}|{type(exc).__name__ if exc is not None else ''}"
        now = self._clock()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        more = f" ({quiet} more like it not logged)" if quiet else ""
        self._log.warning("%s%s%s", what, f": {detail}" if detail else "", more)

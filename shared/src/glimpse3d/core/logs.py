"""Structured logging for every Glimpse3D process.

``configure_logging`` installs one handler on the root logger that writes one line per record on
stderr: a JSON object (``ts``, ``level``, ``logger``, ``msg``, ``service``, any fields passed with
``extra=`` such as ``method``/``code``/``duration_ms``/``request_id``/``job``, and ``exc`` when a
traceback is attached) or, with ``json=False``, a human-readable line carrying the same fields.
Calling it again replaces the handler instead of adding a second one.
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import logging
import sys
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _GlimpseHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker subclass so that reconfiguring finds and replaces the handler it installed."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RESERVED}


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that JSON cannot encode are written with ``str``."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self._service,
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [service] msg key=value ...`` for reading logs in a terminal."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {record.name} [{self._service}] "
            f"{record.getMessage()}"
        )
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(
    service: str, level: str | int = "INFO", json: bool = True, *, stream: TextIO | None = None
) -> None:
    """Route all logging to ``stream`` (default stderr) in the Glimpse3D format; safe to call more
    than once (the handler installed before is replaced)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _GlimpseHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _GlimpseHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(service) if json else TextFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)

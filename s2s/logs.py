"""Log lines of both halves of the `s2s` command, in text or JSON, one line per event.

`s2s serve` and the client commands take the same `--log-format` and `--log-level`. JSON lines
are for log collectors: each is one object with `time` (RFC 3339, UTC, milliseconds), `level`,
`logger` and `message`, plus the event's own fields (`log.info(..., extra=fields(basin=b))`).
Text lines are for people: the server's carry a time stamp; the client's are `level: message`,
so that a failed command still ends with the one line `error: ...` it always printed.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

SERVER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_FIELDS = "s2s_fields"
"""The attribute of a `LogRecord` holding the event's own fields (set through `extra`)."""


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: fields a JSON line carries beside the message."""
    return {_FIELDS: values}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class ClientTextFormatter(logging.Formatter):
    """`level: message`, the way command-line tools print warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_server(level: str, log_format: str) -> None:
    """The server's log: every logger at `level`, on stderr."""
    text = logging.Formatter(SERVER_TEXT_FORMAT)
    _install(JsonFormatter() if log_format == "json" else text, level, logging.getLogger())


def configure_client(level: str, log_format: str, loggers: tuple[str, ...]) -> None:
    """A client command's log: its own `loggers` at `level`; other libraries' only from
    warning up, so `--log-level debug` shows the command's requests, not gRPC's internals."""
    formatter = JsonFormatter() if log_format == "json" else ClientTextFormatter()
    root = logging.getLogger()
    _install(formatter, "warning", root)
    for name in loggers:
        logging.getLogger(name).setLevel(level.upper())


def _install(formatter: logging.Formatter, level: str, logger: logging.Logger) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())

"""Log line formats of ``syncctl``: the plain text lines, or one JSON object per line (``--log-format json``).

Our messages are events with keys (CONTRIBUTING.md): ``"mountd listening url=http://127.0.0.1:4918
store=/x"``. ``JsonFormatter`` writes such a record as::

    {"ts": "2026-01-01T12:00:00.123Z", "level": "INFO", "logger": "mountd.server",
     "event": "mountd listening url=http://127.0.0.1:4918 store=/x",
     "url": "http://127.0.0.1:4918", "store": "/x"}

Invariants:
    * One line per record, whatever the message holds (newlines in it or in a traceback are JSON-escaped).
    * ``ts`` is RFC 3339 in UTC with milliseconds; ``event`` is the whole formatted message, so nothing is
      lost when parsing the pairs misses something.
    * ``key=value`` pairs become fields when cheap: a value runs to the next space, or is quoted ('…' or "…",
      as ``%r`` writes it; the quotes are removed, escapes kept); integers and decimals become numbers. A key
      that would overwrite a fixed field (``RESERVED``) is left in ``event`` only.
    * ``exc_info`` holds the formatted traceback when the record has one; Celery's task records add
      ``task_id`` and ``task_name``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

#: The text format (unchanged from before JSON logs existed).
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Fields every JSON line has, which pairs from the message never overwrite.
RESERVED = frozenset({"ts", "level", "logger", "event", "exc_info", "stack_info", "task_id", "task_name"})
#: Record attributes Celery's task logger sets, copied into the line when present.
TASK_ATTRIBUTES = ("task_id", "task_name")

_PAIR = re.compile(r"""(?<!\S)([A-Za-z_][A-Za-z0-9_.]*)=('[^']*'|"[^"]*"|\S*)""")
_INT = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?\d+\.\d+")


def parse_pairs(message: str) -> dict[str, Any]:
    """The ``key=value`` pairs of a message.

    Args:
        message: The formatted message.

    Returns:
        Fields by key, in message order; the last of a repeated key wins.
    """
    fields: dict[str, Any] = {}
    for key, raw in _PAIR.findall(message):
        if key in RESERVED:
            continue
        fields[key] = _value(raw)
    return fields


def _value(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if _INT.fullmatch(raw):
        return int(raw)
    if _DECIMAL.fullmatch(raw):
        return float(raw)
    return raw


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Format a record.

        Args:
            record: The record.

        Returns:
            The JSON line (without the newline the handler adds).
        """
        message = record.getMessage()
        stamp = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": message,
        }
        for name in TASK_ATTRIBUTES:
            value = getattr(record, name, None)
            if value not in (None, "???"):  # Celery's placeholder outside a task
                doc[name] = str(value)
        doc.update(parse_pairs(message))
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc_info"] = record.exc_text
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for a log format.

    Args:
        log_format: ``text`` or ``json`` (``broker.settings.LOG_FORMATS``).

    Returns:
        The formatter.
    """
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(verbosity: int, log_format: str) -> None:
    """Send log records of ``verbosity`` and above to stderr in ``log_format``.

    Args:
        verbosity: 0 warnings, 1 info, 2 and more debug.
        log_format: ``text`` or ``json``.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    if log_format == "json":
        # Python warnings go to stderr as multi-line text unless they are log records.
        logging.captureWarnings(True)


def use_formatter(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` the formatter of ``log_format`` (for handlers Celery installs).

    Args:
        logger: The logger whose handlers are changed.
        log_format: ``text`` or ``json``.
    """
    for handler in logger.handlers:
        handler.setFormatter(make_formatter(log_format))


def announce(line: str, log_format: str) -> None:
    """Write a line a command always shows on stderr, whatever the log level, in the log format.

    Args:
        line: The text.
        log_format: ``text`` (written as is) or ``json`` (one object, level INFO, logger ``syncctl``).
    """
    if log_format == "json":
        record = logging.makeLogRecord({"name": "syncctl", "levelno": logging.INFO, "levelname": "INFO"})
        record.msg = line
        line = JsonFormatter().format(record)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

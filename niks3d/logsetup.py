"""Logging for the daemon: structured journald entries, readable text or JSON lines, secret redaction.

Callers log with a module logger and, for things worth counting, a stable event name plus fields::

    log_event(logger, logging.INFO, "gc.finished", "GC deleted %d paths", n, deleted_paths=n, freed_bytes=b)

which is the same as ``logger.info(..., extra={"event": "gc.finished", "fields": {...}})``. The outputs:

* ``journal``: one journal entry per record with ``MESSAGE``, ``PRIORITY``, ``CODE_FILE``, ``CODE_LINE``,
  ``CODE_FUNC``, ``LOGGER``, ``SYSLOG_IDENTIFIER=niks3d``, ``NIKS3_EVENT=<event>`` and one
  ``NIKS3_<FIELD>=<value>`` per field (see :func:`journal_entry`), sent with systemd-python's
  ``systemd.journal.send``. Its ``JournalHandler`` is not used because its ``emit`` forwards every
  ``LogRecord`` attribute, ``CODE_ARGS=str(args)`` and ``EXCEPTION_INFO=repr(exc_info)``, which would carry
  unredacted arguments and exception texts into the journal. Without systemd-python, journal output falls
  back to text lines with ``<N>`` priority prefixes, which journald parses on stderr.
* ``text``: ``LEVEL logger: message event=... key=value``, with a timestamp only when stderr is a TTY
  (journald and most supervisors add their own).
* ``json``: one JSON object per line.

``auto`` picks ``journal`` when stderr is connected to the journal (``$JOURNAL_STREAM`` names fd 2's device
and inode), ``text`` otherwise. Every handler carries :class:`RedactFilter`, which blanks ``Authorization``
header values and ``Bearer`` tokens in messages, field values and tracebacks, so that a secret cannot reach
a log by accident.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Literal

from niks3d.errors import ConfigError, ConfigProblem

try:
    from systemd import journal as _journal
except ImportError:  # pragma: no cover - the optional "systemd" extra is not installed
    _journal = None

__all__ = [
    "RedactFilter",
    "event_fields",
    "journal_entry",
    "log_event",
    "redact",
    "routed",
    "setup_logging",
    "stderr_is_journal",
]

LogFormat = Literal["auto", "journal", "text", "json"]

SYSLOG_IDENTIFIER = "niks3d"
REDACTED = "<redacted>"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_MAX_FIELD_NAME = 64  # journald refuses longer field names
_AUTHORIZATION_VALUE = re.compile(r"""(?i)(authorization["']?\s*[:=]\s*b?["']?)[^"'\r\n,;}]+""")
_BEARER_TOKEN = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_SECRET_FIELD = re.compile(r"(?i)authorization")
_NEEDS_QUOTES = re.compile(r"[\s=\"']")
_installed: list[logging.Handler] = []  # the handler the last setup_logging call put on the root logger


@dataclass
class _Routing:
    """What one :func:`routed` block found on its logger, to be put back when the block is the last to leave."""

    handlers: list[logging.Handler]
    level: int
    propagate: bool


_routings: dict[str, list[_Routing]] = {}  # per logger name: the open routed() blocks, oldest first
_routing_lock = threading.Lock()


def redact(text: str) -> str:
    """``text`` with ``Authorization`` header values and ``Bearer <token>`` credentials blanked out."""
    text = _AUTHORIZATION_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    return _BEARER_TOKEN.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _redact_value(name: str, value: object) -> object:
    if _SECRET_FIELD.search(name):
        return REDACTED
    if isinstance(value, str | bytes):
        return redact(value if isinstance(value, str) else value.decode(errors="replace"))
    return value


class RedactFilter(logging.Filter):
    """Formats each record's message once, redacts it, its fields and its traceback, and drops the raw args.

    Attach it to handlers (a logger's filters do not see records propagated from child loggers). It never
    rejects a record; a message whose %-formatting fails is kept, redacted, with a note instead of raising.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_niks3_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not take the caller down
            message = f"{record.msg} [log arguments could not be formatted: {type(exc).__name__}]"
        record.msg = redact(message)
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.__dict__["fields"] = {str(k): _redact_value(str(k), v) for k, v in fields.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.__dict__["_niks3_redacted"] = True
        return True


def _text_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _record_fields(record: logging.LogRecord) -> tuple[str | None, Mapping[str, object]]:
    event = getattr(record, "event", None)
    fields = getattr(record, "fields", None)
    return (
        str(event) if event is not None else None,
        fields if isinstance(fields, Mapping) else {},
    )


def journal_field_name(name: str) -> str:
    """``NIKS3_<NAME>``: upper case, each character outside ``[A-Z0-9_]`` an underscore, at most 64 long."""
    return ("NIKS3_" + re.sub(r"[^A-Z0-9_]", "_", name.upper()))[:_MAX_FIELD_NAME]


def event_fields(event: str | None, fields: Mapping[str, object]) -> dict[str, str]:
    """The journal fields for an event name and its fields: ``NIKS3_EVENT`` and one ``NIKS3_<NAME>`` each."""
    result = {} if event is None else {"NIKS3_EVENT": event}
    for name, value in fields.items():
        result[journal_field_name(name)] = _text_value(value)
    return result


def _priority(levelno: int) -> int:
    """The syslog priority (0-7) for a logging level."""
    for limit, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3)):
        if levelno <= limit:
            return priority
    return 2


def _full_message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    for extra in (record.exc_text, record.stack_info):
        if extra:
            message = f"{message}\n{extra}"
    return message


def journal_entry(record: logging.LogRecord) -> dict[str, str]:
    """Every journal field for a (redacted) record, ``MESSAGE`` included (with the traceback, if any)."""
    event, fields = _record_fields(record)
    entry = {
        "MESSAGE": _full_message(record),
        "PRIORITY": str(_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    entry.update(event_fields(event, fields))
    return entry


class JournalEntryHandler(logging.Handler):
    """Sends each record as one structured journal entry (see :func:`journal_entry`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = journal_entry(record)
            message = entry.pop("MESSAGE")
            code = {"CODE_FILE": entry.pop("CODE_FILE"), "CODE_FUNC": entry.pop("CODE_FUNC")}
            line = int(entry.pop("CODE_LINE"))
            _journal.send(message, CODE_LINE=line, **code, **entry)
        except Exception:
            self.handleError(record)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message event=... key=value``, optionally after a timestamp or ``<N>`` prefix."""

    def __init__(self, *, timestamps: bool, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        pairs = [("event", event)] if event is not None else []
        pairs += [(name, _text_value(value)) for name, value in fields.items()]
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        for name, text in pairs:
            plain = text and not _NEEDS_QUOTES.search(text)
            quoted = text if plain else json.dumps(text, ensure_ascii=False)
            line += f" {name}={quoted}"
        if self.timestamps:
            line = f"{self.formatTime(record)} {line}"
        for extra in (record.exc_text, record.stack_info):
            if extra:
                line = f"{line}\n{extra}"
        if self.syslog_prefix:
            prefix = f"<{_priority(record.levelno)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, event, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        obj: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if event is not None:
            obj["event"] = event
        if fields:
            obj["fields"] = dict(fields)
        if record.exc_text:
            obj["exception"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        return json.dumps(obj, ensure_ascii=False, default=str)


def stderr_is_journal(fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM`` = ``<dev>:<inode>``)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _make_handler(fmt: LogFormat, stream: IO[str]) -> logging.Handler:
    if fmt == "auto":
        fmt = "journal" if stderr_is_journal() else "text"
    handler: logging.Handler
    if fmt == "journal" and _journal is not None:
        handler = JournalEntryHandler()
    elif fmt == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        journal_fallback = fmt == "journal"
        handler = logging.StreamHandler(stream)
        timestamps = not journal_fallback and stream.isatty()
        handler.setFormatter(TextFormatter(timestamps=timestamps, syslog_prefix=journal_fallback))
    return handler


def setup_logging(level: str = "info", fmt: LogFormat = "auto", *, stream: IO[str] | None = None) -> logging.Handler:
    """Route all logging through one redacting handler on the root logger and return that handler.

    ``stream`` (default: ``sys.stderr`` at call time) is used by the text and json formats. Calling it again
    replaces the handler installed by the previous call and leaves other handlers alone. Raises
    :class:`ConfigError` for an unknown ``level`` or ``fmt``.
    """
    levelno = _LEVELS.get(level.lower())
    if levelno is None:
        reason = f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}"
        raise ConfigError([ConfigProblem(file="", key="logging.level", reason=reason)])
    if fmt not in ("auto", "journal", "text", "json"):
        reason = f"unknown log format {fmt!r}; expected auto, journal, text or json"
        raise ConfigError([ConfigProblem(file="", key="logging.format", reason=reason)])
    handler = _make_handler(fmt, sys.stderr if stream is None else stream)
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(levelno)
    return handler


@contextlib.contextmanager
def routed(name: str, handlers: list[logging.Handler], *, level: int | None = None, propagate: bool) -> Iterator[None]:
    """Send logger ``name``'s records to ``handlers`` (and only there unless ``propagate``) for a block.

    The logger's handlers, level and propagation are restored when the block ends, also when blocks overlap and
    end out of order (two commands run in threads of one process): a block that ends while a younger one is
    still open hands what it found to that younger one, so the state from before the oldest block comes back
    when the last one ends, and never the state one block installed.
    """
    logger = logging.getLogger(name)
    with _routing_lock:
        frame = _Routing(logger.handlers[:], logger.level, logger.propagate)
        stack = _routings.setdefault(name, [])
        stack.append(frame)
        logger.handlers[:] = handlers
        if level is not None:
            logger.setLevel(level)
        logger.propagate = propagate
    try:
        yield
    finally:
        with _routing_lock:
            index = next(i for i, open_frame in enumerate(stack) if open_frame is frame)
            del stack[index]
            if index < len(stack):
                stack[index].handlers, stack[index].level, stack[index].propagate = (
                    frame.handlers,
                    frame.level,
                    frame.propagate,
                )
            else:
                logger.handlers[:], logger.propagate = frame.handlers, frame.propagate
                logger.setLevel(frame.level)
            if not stack:
                del _routings[name]


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    message: str,
    *args: object,
    exc_info: object = False,
    **fields: object,
) -> None:
    """Log ``message % args`` with a stable ``event`` name and structured ``fields`` in one call.

    The caller's file, line and function are recorded (not this helper's).
    """
    if logger.isEnabledFor(level):
        extra = {"event": event, "fields": fields}
        # exc_info is typed object only so that **fields of any mapping type passes mypy; it is a flag.
        logger.log(level, message, *args, exc_info=bool(exc_info), extra=extra, stacklevel=2)

"""Log output formats, journal field mapping, format auto-detection and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from niks3d import logsetup
from niks3d.errors import ConfigError
from niks3d.logsetup import (
    JournalEntryHandler,
    TextFormatter,
    event_fields,
    journal_entry,
    journal_field_name,
    log_event,
    redact,
    setup_logging,
    stderr_is_journal,
)

REPO = Path(__file__).resolve().parent.parent
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
TOKEN = "s3cr3t-T0ken.value_42"  # the secret the redaction tests must never see printed
VALID_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
logger = logging.getLogger("niks3d.test")


@pytest.fixture
def journal_sends(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces systemd.journal.send and collects its arguments (MESSAGE included) per call."""
    calls: list[dict[str, Any]] = []
    journal = pytest.importorskip("systemd.journal")

    def send(MESSAGE: str, **fields: Any) -> None:  # systemd.journal.send's own signature
        calls.append({"MESSAGE": MESSAGE, **fields})

    monkeypatch.setattr(journal, "send", send)
    return calls


# --- journal field mapping (pure) ----------------------------------------------------------------------


def test_event_fields_map_names_to_valid_upper_case_journal_fields() -> None:
    fields = {"deleted_paths": 3, "freed-bytes": 1024, "dry.run": False, "note": None, "ratio": 0.5}
    assert event_fields("gc.finished", fields) == {
        "NIKS3_EVENT": "gc.finished",
        "NIKS3_DELETED_PATHS": "3",
        "NIKS3_FREED_BYTES": "1024",
        "NIKS3_DRY_RUN": "false",
        "NIKS3_NOTE": "null",
        "NIKS3_RATIO": "0.5",
    }
    assert event_fields(None, {}) == {}


@pytest.mark.parametrize("name", ["x", "Mixed Case", "ünïcode", "_leading", "9lives", "a" * 100])
def test_journal_field_names_are_always_valid(name: str) -> None:
    field = journal_field_name(name)
    assert VALID_JOURNAL_FIELD.fullmatch(field), field
    assert field.startswith("NIKS3_")


def test_journal_entry_carries_the_callers_code_location_and_priority() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collector = Collect()
    logger.addHandler(collector)
    try:
        line = sys._getframe().f_lineno + 1
        log_event(logger, logging.WARNING, "gc.finished", "GC deleted %d paths", 3, deleted_paths=3)
    finally:
        logger.removeHandler(collector)
    [record] = records
    assert journal_entry(record) == {
        "MESSAGE": "GC deleted 3 paths",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "niks3d",
        "LOGGER": "niks3d.test",
        "CODE_FILE": __file__,
        "CODE_LINE": str(line),
        "CODE_FUNC": "test_journal_entry_carries_the_callers_code_location_and_priority",
        "NIKS3_EVENT": "gc.finished",
        "NIKS3_DELETED_PATHS": "3",
    }


def test_journal_handler_sends_structured_fields(journal_sends: list[dict[str, Any]]) -> None:
    handler = setup_logging("debug", "journal")
    assert isinstance(handler, JournalEntryHandler)
    log_event(logger, logging.INFO, "gc.finished", "GC done", deleted_paths=3, freed_bytes=4096)
    logger.debug("plain %s", "debug line")
    assert len(journal_sends) == 2
    first, second = journal_sends
    assert first["MESSAGE"] == "GC done"
    assert first["PRIORITY"] == "6"
    assert first["SYSLOG_IDENTIFIER"] == "niks3d"
    assert first["CODE_FILE"] == __file__
    assert isinstance(first["CODE_LINE"], int)
    assert first["CODE_FUNC"] == "test_journal_handler_sends_structured_fields"
    assert (first["NIKS3_EVENT"], first["NIKS3_DELETED_PATHS"], first["NIKS3_FREED_BYTES"]) == (
        "gc.finished",
        "3",
        "4096",
    )
    assert second["MESSAGE"] == "plain debug line"
    assert second["PRIORITY"] == "7"
    assert "NIKS3_EVENT" not in second
    for call in journal_sends:
        assert all(VALID_JOURNAL_FIELD.fullmatch(key) for key in call), sorted(call)


def test_journal_entries_are_redacted_including_tracebacks(journal_sends: list[dict[str, Any]]) -> None:
    setup_logging("info", "journal")
    try:
        raise PermissionError(f"refused Authorization: Bearer {TOKEN}")
    except PermissionError:
        logger.exception("upload failed for %s", {"Authorization": f"Bearer {TOKEN}"})
    [call] = journal_sends
    assert TOKEN not in repr(call)
    assert call["PRIORITY"] == "3"
    assert "Traceback (most recent call last)" in call["MESSAGE"]
    assert "PermissionError" in call["MESSAGE"]


@pytest.mark.skipif(not JOURNAL_SOCKET.exists(), reason="journald is not running on this machine")
def test_journal_entry_round_trips_through_journald() -> None:
    journal = pytest.importorskip("systemd.journal")
    run = uuid.uuid4().hex
    setup_logging("info", "journal")
    log_event(logger, logging.INFO, "test.roundtrip", "round trip %s", run, run=run, count=7)
    deadline = time.monotonic() + 10
    entries: list[dict[str, Any]] = []
    while not entries and time.monotonic() < deadline:
        reader = journal.Reader()
        reader.add_match(NIKS3_RUN=run)
        entries = list(reader)
        reader.close()
        time.sleep(0.1)
    [entry] = entries
    assert entry["MESSAGE"] == f"round trip {run}"
    assert entry["NIKS3_EVENT"] == "test.roundtrip"
    assert entry["NIKS3_COUNT"] == "7"
    assert entry["SYSLOG_IDENTIFIER"] == "niks3d"


def test_journal_without_systemd_python_falls_back_to_prefixed_stderr_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logsetup, "_journal", None)
    out = io.StringIO()
    setup_logging("info", "journal", stream=out)
    log_event(logger, logging.WARNING, "s3.slow", "S3 is slow", seconds=3)
    assert out.getvalue() == "<4>WARNING niks3d.test: S3 is slow event=s3.slow seconds=3\n"


# --- text and json ---------------------------------------------------------------------------------------


def test_text_lines_are_level_logger_message_and_fields() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    log_event(logger, logging.INFO, "push.done", "pushed %d paths", 2, paths=2, root="/nix/store/x y", ok=True)
    logger.debug("not shown at info level")
    logger.warning("no fields here")
    assert out.getvalue().splitlines() == [
        'INFO niks3d.test: pushed 2 paths event=push.done paths=2 root="/nix/store/x y" ok=true',
        "WARNING niks3d.test: no fields here",
    ]


def test_json_lines_are_one_object_per_record() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log_event(logger, logging.ERROR, "gc.failed", "GC failed: %s", "boom", deleted_paths=0)
    logger.info("second")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first.pop("time"))
    assert first == {
        "level": "error",
        "logger": "niks3d.test",
        "message": "GC failed: boom",
        "event": "gc.failed",
        "fields": {"deleted_paths": 0},
    }
    assert second["message"] == "second"
    assert "event" not in second


def _stderr_of_child(stderr_is_tty: bool) -> str:
    code = (
        "import logging; from niks3d.logsetup import setup_logging; setup_logging('info', 'text'); "
        "logging.getLogger('niks3d.child').info('hello')"
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    if not stderr_is_tty:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30
        ).stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], env=env, stderr=follower, check=True, timeout=30)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the pty has no writer left and no data
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_text_lines_carry_a_timestamp_only_on_a_tty() -> None:
    assert _stderr_of_child(stderr_is_tty=False) == "INFO niks3d.child: hello\n"
    tty_line = _stderr_of_child(stderr_is_tty=True).strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO niks3d\.child: hello", tty_line), tty_line


def test_text_formatter_prefixes_every_line_with_the_syslog_priority() -> None:
    record = logging.LogRecord("niks3d.x", logging.ERROR, __file__, 1, "two\nlines", None, None)
    assert TextFormatter(timestamps=False, syslog_prefix=True).format(record) == ("<3>ERROR niks3d.x: two\n<3>lines")


# --- redaction -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"Bearer {TOKEN}",
        f"header Authorization: Bearer {TOKEN}",
        f"{{'Authorization': 'Bearer {TOKEN}', 'Host': 'cache'}}",
        f'{{"authorization": "Basic {TOKEN}"}}',
        f"headers={{'Authorization': b'AWS4-HMAC-SHA256 Credential={TOKEN}'}}",
        f"proxy-authorization={TOKEN}",
        f"bearer    {TOKEN}==",
    ],
)
def test_redact_blanks_authorization_values_and_bearer_tokens(text: str) -> None:
    redacted = redact(text)
    assert TOKEN not in redacted
    assert "<redacted>" in redacted


def test_redact_keeps_ordinary_text() -> None:
    text = "pushed 3 paths to bucket cache; authorization succeeded for token 'ci'"
    assert redact(text) == text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_output_format_prints_a_bearer_token(fmt: logsetup.LogFormat) -> None:
    out = io.StringIO()
    setup_logging("debug", fmt, stream=out)
    logger.info("request headers %s", {"Authorization": f"Bearer {TOKEN}"})
    logger.info(f"client sent Bearer {TOKEN}")  # an f-string: the accident the filter exists for
    log_event(logger, logging.INFO, "auth.refused", "refused", header=f"Bearer {TOKEN}", authorization=TOKEN)
    try:
        raise ValueError(f"Authorization: Bearer {TOKEN}")
    except ValueError:
        logger.exception("failed")
    output = out.getvalue()
    assert output.count("<redacted>") >= 5
    assert TOKEN not in output


def test_a_broken_format_string_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    handler = setup_logging("info", "text", stream=out)
    isolated = logging.getLogger("niks3d.test.isolated")  # keeps the record away from pytest's own handler
    monkeypatch.setattr(isolated, "propagate", False)
    isolated.addHandler(handler)
    try:
        isolated.info("expected a number: %d", "not a number")
    finally:
        isolated.removeHandler(handler)
    assert "expected a number: %d [log arguments could not be formatted: TypeError]" in out.getvalue()


# --- setup -----------------------------------------------------------------------------------------------


def test_auto_picks_the_journal_when_journal_stream_names_stderr(
    monkeypatch: pytest.MonkeyPatch, journal_sends: list[dict[str, Any]]
) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    assert isinstance(setup_logging("info", "auto"), JournalEntryHandler)
    logger.info("to the journal")
    assert [call["MESSAGE"] for call in journal_sends] == ["to the journal"]


@pytest.mark.parametrize("value", [None, "", "1:2", "not-a-stream"])
def test_auto_picks_text_when_journal_stream_does_not_name_stderr(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", value)
    assert not stderr_is_journal()
    handler = setup_logging("info", "auto", stream=io.StringIO())
    assert isinstance(handler.formatter, TextFormatter)


def test_setup_logging_again_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    first = setup_logging("info", "text", stream=io.StringIO())
    second = setup_logging("warning", "json", stream=io.StringIO())
    assert first not in root.handlers
    assert root.handlers == [*before, second]
    assert root.level == logging.WARNING


def test_unknown_level_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"logging\.level: unknown log level 'loud'"):
        setup_logging("loud")


def test_routed_blocks_that_overlap_and_end_out_of_order_restore_the_state_from_before() -> None:
    """Two client commands in threads of one process: whichever ends first, the logger comes back unchanged."""
    name = f"niks3d.test.routed.{uuid.uuid4().hex}"
    target = logging.getLogger(name)
    before = logging.StreamHandler(io.StringIO())
    target.handlers[:] = [before]
    target.propagate = True
    target.setLevel(logging.WARNING)
    first, second = logging.NullHandler(), logging.NullHandler()
    outer = logsetup.routed(name, [first], level=logging.DEBUG, propagate=False)
    inner = logsetup.routed(name, [second], level=logging.INFO, propagate=False)
    outer.__enter__()
    inner.__enter__()
    assert target.handlers == [second]
    outer.__exit__(None, None, None)  # the older command ends first
    assert (target.handlers, target.level, target.propagate) == ([second], logging.INFO, False)
    inner.__exit__(None, None, None)
    assert (target.handlers, target.level, target.propagate) == ([before], logging.WARNING, True)
    with logsetup.routed(name, [first], propagate=False):  # level=None keeps the level
        assert (target.handlers, target.level, target.propagate) == ([first], logging.WARNING, False)
    assert (target.handlers, target.level, target.propagate) == ([before], logging.WARNING, True)

"""Progress display: byte and time formatting, the status line, throughput (progress.py)."""

from __future__ import annotations

import io

import pytest

from niks3d.client.progress import Progress, format_bytes, format_duration, format_status


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 << 20, "5.0 MiB"),
        (3 << 40, "3.0 TiB"),
    ],
)
def test_format_bytes(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (75, "1:15"), (3725, "1:02:05"), (-3, "0:00")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_status_line_shows_paths_bytes_rate_and_eta():
    line = format_status(
        paths_done=12, paths_total=40, nar_done=100 << 20, nar_total=500 << 20, sent=41 << 20, rate=10 << 20
    )
    assert line == "[12/40 paths] 100.0 MiB / 500.0 MiB NAR, 41.0 MiB sent, 10.0 MiB/s, ETA 0:40"


def test_status_line_without_a_rate_has_no_eta():
    line = format_status(paths_done=0, paths_total=3, nar_done=0, nar_total=10, sent=0, rate=None)
    assert line == "[0/3 paths] 0 B / 10 B NAR, 0 B sent"


def test_rate_is_measured_over_the_recent_window():
    now = [100.0]
    progress = Progress("tty", io.StringIO(), clock=lambda: now[0])
    progress.plan(2, 100 << 20)
    assert progress.rate() is None  # not enough history yet
    for _ in range(20):
        now[0] += 1
        progress.add_nar_bytes(2 << 20)
        progress.rate()
    assert progress.rate() == pytest.approx(2 << 20)
    for _ in range(15):  # it slows down: the old fast samples leave the window
        now[0] += 1
        progress.add_nar_bytes(1 << 20)
        progress.rate()
    assert progress.rate() == pytest.approx(1 << 20)


def test_tty_mode_redraws_one_line_and_clears_it():
    stream = io.StringIO()
    progress = Progress("tty", stream)
    progress.plan(1, 10)
    progress.draw()
    progress.clear_line()
    assert stream.getvalue() == "\r\x1b[K[0/1 paths] 0 B / 10 B NAR, 0 B sent\r\x1b[K"


def test_plain_mode_logs_one_line_per_path_and_never_draws(caplog):
    stream = io.StringIO()
    progress = Progress("plain", stream)
    progress.plan(1, 10)
    with caplog.at_level("INFO", logger="niks3d.client.push"):
        progress.path_done("uploaded /nix/store/x (nar)")
        progress.draw()
    assert stream.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["uploaded /nix/store/x (nar)"]
    assert progress.paths_done == 1

"""What a push shows while it runs: a status line on a terminal, plain log lines otherwise.

On a terminal, one line on stderr is redrawn a few times a second::

    [12/40 paths] 120.3 MiB / 500.0 MiB NAR, 41.0 MiB sent, 35.2 MiB/s, ETA 0:11

Elsewhere (CI logs, files) each finished path is one log line. Counters are updated from worker threads, so
they sit behind a lock. The formatting helpers are pure functions, tested on their own.
"""

from __future__ import annotations

__all__ = ["Mode", "Progress", "TerminalLogHandler", "format_bytes", "format_duration", "format_status"]

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, TextIO

logger = logging.getLogger("niks3d.client.push")

Mode = Literal["tty", "plain", "quiet"]
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_RATE_WINDOW = 10.0  # seconds of history behind the throughput figure
_REDRAW = 0.25


def format_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB are shown exactly."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_status(
    *,
    paths_done: int,
    paths_total: int,
    nar_done: int,
    nar_total: int,
    sent: int,
    rate: float | None,
    upstream: int = 0,
) -> str:
    """The status line; ``rate`` is NAR bytes per second (None while unknown); ``upstream`` paths are left to
    the upstream cache."""
    left = f", {upstream} upstream" if upstream else ""
    text = (
        f"[{paths_done}/{paths_total} paths{left}] {format_bytes(nar_done)} / {format_bytes(nar_total)} NAR, "
        f"{format_bytes(sent)} sent"
    )
    if rate is not None and rate > 0:
        text += f", {format_bytes(rate)}/s"
        remaining = max(0, nar_total - nar_done)
        text += f", ETA {format_duration(remaining / rate)}"
    return text


class Progress:
    """A push's counters and their display (``tty``: status line, ``plain``: log lines, ``quiet``: none)."""

    def __init__(self, mode: Mode, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.stream = stream
        self.clock = clock
        self._lock = threading.Lock()
        self.paths_total = 0
        self.paths_done = 0
        self.nar_total = 0
        self.nar_done = 0
        self.sent = 0
        self.upstream = 0
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque()
        self._line_shown = False

    # -- counters (any thread) ----------------------------------------------------------------------------

    def plan(self, paths: int, nar_bytes: int) -> None:
        """Add ``paths`` paths and ``nar_bytes`` NAR bytes to do."""
        with self._lock:
            self.paths_total += paths
            self.nar_total += nar_bytes

    def add_upstream(self, paths: int) -> None:
        """``paths`` more paths left to the upstream cache (not uploaded)."""
        with self._lock:
            self.upstream += paths

    def add_nar_bytes(self, count: int) -> None:
        """``count`` more NAR bytes read, hashed and compressed."""
        with self._lock:
            self.nar_done += count

    def add_sent(self, count: int) -> None:
        """``count`` more compressed bytes uploaded."""
        with self._lock:
            self.sent += count

    def path_done(self, text: str | None = None) -> None:
        """One more path finished; ``text`` is logged as its line in plain mode."""
        with self._lock:
            self.paths_done += 1
        if text and self.mode == "plain":
            logger.info("%s", text)
        elif text:
            logger.debug("%s", text)

    # -- display (event loop) -------------------------------------------------------------------------------

    def rate(self) -> float | None:
        """NAR bytes per second over the last few seconds, or None while there is too little history."""
        now = self.clock()
        with self._lock:
            done = self.nar_done
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        first_time, first_done = samples[0]
        if now - first_time < 1.0:
            return None
        return (done - first_done) / (now - first_time)

    def status(self) -> str:
        """The current status line."""
        rate = self.rate()
        with self._lock:
            return format_status(
                paths_done=self.paths_done,
                paths_total=self.paths_total,
                nar_done=self.nar_done,
                nar_total=self.nar_total,
                sent=self.sent,
                rate=rate,
                upstream=self.upstream,
            )

    def clear_line(self) -> None:
        """Erase the status line (before something else is written to the terminal)."""
        if self._line_shown and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line_shown = False

    def draw(self) -> None:
        """Redraw the status line (tty mode only)."""
        if self.mode != "tty" or self.stream is None:
            return
        self.stream.write("\r\x1b[K" + self.status())
        self.stream.flush()
        self._line_shown = True

    async def run(self) -> None:
        """Redraw the status line until cancelled."""
        if self.mode != "tty":
            return
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.draw()
                await asyncio.sleep(_REDRAW)


class TerminalLogHandler(logging.StreamHandler[TextIO]):
    """A stderr handler that clears the progress line before a log line and lets it be redrawn after."""

    def __init__(self, stream: TextIO, progress: Progress | None = None) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear_line()
        super().emit(record)

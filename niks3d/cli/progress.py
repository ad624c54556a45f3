"""Progress of a one-shot maintenance command: ``STATUS=`` for systemd, one rewritten line on a terminal."""

from __future__ import annotations

__all__ = ["StatusLine"]

import sys
import time
from typing import TextIO

from niks3d.systemd import Notifier


class StatusLine:
    """Call with a short text; systemd gets every text, a terminal at most 10 per second, nothing else."""

    def __init__(self, notifier: Notifier | None = None, stream: TextIO | None = None) -> None:
        self.notifier = notifier or Notifier()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, text: str) -> None:
        self.notifier.status(text)
        now = time.monotonic()
        if self.tty and now - self._last >= 0.1:
            self._last = now
            self._shown = True
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

"""The event loop the long-running commands run on: uvloop's.

uvloop (libuv under asyncio's interface) answers a narinfo from memory in about 20 % less CPU than the standard
loop (bench/read.py, measured with client and daemon on one core: 63 → 50 µs a request), and moves bytes through
transports with fewer Python frames. Everything in niks3d uses only asyncio's public interface, so the standard
loop works as well: ``NIKS3_EVENT_LOOP=asyncio`` selects it, for a comparison or if uvloop is ever suspected.
"""

from __future__ import annotations

__all__ = ["ENV_VAR", "SLICE_SECONDS", "Pauser", "loop_factory", "run"]

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from niks3d.errors import ConfigError, ConfigProblem

T = TypeVar("T")

ENV_VAR = "NIKS3_EVENT_LOOP"
# The longest a loop over a large request's items runs before it lets other tasks in.
SLICE_SECONDS = 0.002


class Pauser:
    """``await pause()`` in a long loop of CPU work: yields to the event loop once ``SLICE_SECONDS`` have passed
    since the last yield, so that other requests are answered in between (one large push session must not stall
    the daemon). Costs one clock read per call otherwise."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def __call__(self) -> None:
        now = time.perf_counter()
        if now - self._since >= SLICE_SECONDS:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop, or the standard one when ``NIKS3_EVENT_LOOP=asyncio``; anything else is a ConfigError."""
    choice = os.environ.get(ENV_VAR, "uvloop").strip().lower() or "uvloop"
    if choice == "uvloop":
        return uvloop.new_event_loop
    if choice == "asyncio":
        return asyncio.new_event_loop
    raise ConfigError([ConfigProblem("environment", ENV_VAR, f"{choice!r} is not 'uvloop' or 'asyncio'")])


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like :func:`asyncio.run`, on the loop :func:`loop_factory` names."""
    try:
        factory = loop_factory()
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

"""The event loop the commands run on: uvloop by default, the standard loop on request, nothing else."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from niks3d import eventloop
from niks3d.errors import ConfigError


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_commands_run_on_uvloop_by_default(monkeypatch):
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.run(_loop_type()) is uvloop.Loop


def test_the_standard_loop_can_be_chosen(monkeypatch):
    monkeypatch.setenv(eventloop.ENV_VAR, "asyncio")
    loop_type = eventloop.run(_loop_type())
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(eventloop.ENV_VAR, "trio")
    coro = _loop_type()
    with pytest.raises(ConfigError, match=r"NIKS3_EVENT_LOOP: 'trio' is not 'uvloop' or 'asyncio'"):
        eventloop.run(coro)
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


async def test_a_pauser_lets_other_tasks_run_once_its_slice_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    pause = eventloop.Pauser()
    task = asyncio.create_task(other())
    monkeypatch.setattr(eventloop, "SLICE_SECONDS", 3600.0)
    await pause()  # within its slice: no yield, the other task has not run
    assert ran == []
    monkeypatch.setattr(eventloop, "SLICE_SECONDS", 0.0)
    await pause()  # slice used up: it yields, and the other task runs
    assert ran == [1]
    await task

"""``niks3 build [NIX BUILD ARGS...]``: ``nix build`` that uploads every output as soon as it is built.

It makes a private queue in a temporary directory and a hook script that feeds it (:mod:`hookscript`), runs
``nix build --option post-build-hook <script> ARGS...`` with the terminal passed through, and drains the queue
with an in-process :class:`~niks3d.client.agent.Agent` while Nix builds. When Nix exits, successfully or not,
it waits until everything queued was pushed, then exits with Nix's status; with Nix's status 0 but uploads that
failed it exits 1. Paths it could not push are moved to the persistent queue (:func:`default_queue_path`), where
``niks3 agent`` finds them later, and are listed.

``post-build-hook`` is a restricted setting: with a Nix daemon it takes effect only for a trusted user
(``trusted-users``); otherwise Nix ignores it with a warning, and nothing is uploaded while building
(docs/client.md). Use ``--keep-going`` to have Nix build, and so upload, everything that does not depend on a
failed derivation.
"""

from __future__ import annotations

__all__ = ["BuildOptions", "run_build"]

import asyncio
import logging
import shlex
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from niks3d.client.agent import Agent, AgentOptions
from niks3d.client.api import ApiClient
from niks3d.client.hookscript import write_hook_script
from niks3d.client.queue import Queue, QueueError, default_queue_path
from niks3d.errors import ClientError

logger = logging.getLogger("niks3d.client.build")

NIX_BUILD = ["nix", "--extra-experimental-features", "nix-command", "build"]


@dataclass(frozen=True)
class BuildOptions:
    """``nix_args`` go to ``nix build``; ``agent`` says how to upload (its queue path is replaced)."""

    nix_args: tuple[str, ...]
    agent: AgentOptions
    nix_command: tuple[str, ...] = tuple(NIX_BUILD)
    fallback_queue: str | None = None  # None: default_queue_path()


def _move_leftovers(queue_path: str, fallback: str) -> list[str]:
    with Queue(queue_path) as queue:
        left = [e.path for e in queue.entries()]
    if left:
        try:
            with Queue(fallback, create_dir=True) as target:
                target.add(left, source="build")
        except QueueError as exc:
            logger.error("could not keep the paths that were not uploaded: %s", exc)
    return left


async def run_build(http: aiohttp.ClientSession, api: ApiClient, options: BuildOptions) -> int:
    """Run the build and the uploads; return the exit status (Nix's, or 1 when only uploads failed)."""
    with tempfile.TemporaryDirectory(prefix="niks3-build-") as tmp:
        queue_path = str(Path(tmp) / "queue.sqlite")
        Queue(queue_path).close()
        hook = write_hook_script(Path(tmp) / "post-build-hook", queue_path)
        argv = [*options.nix_command, "--option", "post-build-hook", str(hook), *options.nix_args]
        stop = asyncio.Event()
        agent = Agent(http, api, replace(options.agent, queue_path=queue_path, once=False), stop=stop)
        uploads = asyncio.create_task(agent.run())
        logger.info("running %s", shlex.join(argv))
        try:
            process = await asyncio.create_subprocess_exec(*argv)
        except OSError as exc:
            stop.set()
            await uploads
            raise ClientError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            status = await process.wait()
        except BaseException:
            if process.returncode is None:
                process.terminate()
                await process.wait()
            raise
        finally:
            stop.set()
        if not uploads.done():
            logger.info("nix build exited with status %d; waiting for the uploads to finish", status)
        result = await uploads
        left = _move_leftovers(queue_path, options.fallback_queue or default_queue_path())
    logger.info(
        "uploaded %d built paths in %d batches%s",
        result.published,
        result.batches,
        f", dropped {result.dropped}" if result.dropped else "",
    )
    if left:
        logger.error(
            "%d built paths were NOT uploaded%s; they are queued in %s for `niks3 agent`: %s",
            len(left),
            f" ({result.gave_up})" if result.gave_up else "",
            options.fallback_queue or default_queue_path(),
            " ".join(left),
        )
    if status != 0:
        return status if status > 0 else 128 - status
    return 1 if left else 0

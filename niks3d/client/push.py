"""``niks3 push``: push the closures of some store paths to niks3d in one upload session.

The steps (docs/api.md): check the server (``GET /info``); resolve the closure with ``nix path-info``; leave
the paths an upstream key signed to the upstream cache (niks3d/client/upstream.py); find build logs and CA
realisations; open one session for everything, keyed by a digest of the request so that a push started again
resumes it; upload what the server asks for; report; ``complete``, waiting while another
session still uploads shared objects (``409``) and uploading again what the server did not find (``422``);
finally pin the root if asked.

Failures: a NAR that does not match the store's NarHash/NarSize aborts the session (``DELETE``) and fails
naming the path. Any other failure (network, interruption) leaves the session open, so that the same push
started again picks it up and skips everything already reported. A session that was closed under the push
(expired, aborted) is replaced by a new one, at most twice.
"""

from __future__ import annotations

__all__ = ["PushOptions", "PushResult", "push", "summary_line"]

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from niks3d.client.api import ApiClient, ObjectsMissing, ObjectsPending, SessionClosed
from niks3d.client.buildlogs import find_build_log, read_derivation
from niks3d.client.closure import PathInfo, query_closure
from niks3d.client.models import CompleteAnswer, ServerInfo
from niks3d.client.narstream import NarMismatch
from niks3d.client.pipeline import PipelineSettings, Uploaded, UploadPipeline
from niks3d.client.plan import SessionPlan, idempotency_key, plan_work, session_body, specs_to_work
from niks3d.client.progress import Progress, format_bytes
from niks3d.client.realisations import LocalRealisation, query_build_traces, query_realisations
from niks3d.client.reporter import Reporter
from niks3d.client.store import LocalStore
from niks3d.client.upstream import UpstreamSplit, choose_keys, split_upstream, upstream_entries
from niks3d.errors import ClientError, Niks3Error
from niks3d.nix.storepath import StorePath

logger = logging.getLogger(__name__)

_MAX_SESSION_RESTARTS = 2
_MAX_MISSING_ROUNDS = 3


@dataclass(frozen=True)
class PushOptions:
    """What to push and how."""

    roots: tuple[StorePath, ...]
    store: LocalStore
    pin: str | None = None
    logs: bool = True
    realisations: bool = True
    pending_timeout: float = 600.0  # seconds to wait for objects another session is uploading
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    upstream_filter: bool = True  # leave paths signed by an upstream key to the upstream cache
    upstream_keys: tuple[str, ...] = ()  # the keys to filter by instead of the server's upstream_keys


@dataclass
class PushResult:
    """What a push did, for people and for ``--json``."""

    server: str
    session_id: str
    roots: list[str]
    paths: int
    uploaded: list[Uploaded]
    cached: list[str]
    already_uploaded: list[str]
    published: list[str]
    nar_bytes: int
    bytes_sent: int
    seconds: float
    pin: str | None
    upstream: list[str] = field(default_factory=list)  # paths of the closure left to the upstream cache
    upstream_nar_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "server": self.server,
            "session_id": self.session_id,
            "roots": self.roots,
            "paths": self.paths,
            "uploaded": [
                {
                    "path": u.path.path,
                    "nar_size": u.nar_size,
                    "file_size": u.file_size,
                    "objects": u.kinds,
                    "bytes_sent": u.bytes_sent,
                }
                for u in self.uploaded
            ],
            "cached": self.cached,
            "upstream": self.upstream,
            "upstream_nar_bytes": self.upstream_nar_bytes,
            "already_uploaded": self.already_uploaded,
            "published": self.published,
            "nar_bytes": self.nar_bytes,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "pin": self.pin,
        }


@dataclass
class _Inputs:
    info: ServerInfo
    closure: dict[StorePath, PathInfo]  # the paths to push
    logs: dict[StorePath, Path]
    realisations: dict[StorePath, list[LocalRealisation]]
    body: dict[str, Any]
    split: UpstreamSplit
    everything: dict[StorePath, PathInfo]  # the whole closure, upstream paths included


async def _gather_inputs(api: ApiClient, options: PushOptions) -> _Inputs:
    info = await api.info()
    if info.store_dir != "/nix/store":
        raise ClientError(f"the server caches store {info.store_dir!r}; this client pushes from /nix/store")
    everything = await query_closure(list(options.roots), options.store)
    keys = choose_keys(info, options.upstream_keys, enabled=options.upstream_filter)
    split = split_upstream(options.roots, everything, keys)
    closure = split.pushed
    if split.upstream:
        logger.info(
            "%d of %d paths (%s of NAR) are signed by an upstream key (%s): left to the upstream cache",
            len(split.upstream),
            len(everything),
            format_bytes(split.upstream_nar_bytes(everything)),
            ", ".join(k.name for k in keys),
        )
    if len(closure) > info.limits.max_paths_per_session:
        raise ClientError(
            f"the closure has {len(closure)} paths, more than the {info.limits.max_paths_per_session} "
            "the server takes in one session; push fewer roots at a time"
        )
    logs: dict[StorePath, Path] = {}
    derivations: dict[StorePath, bytes] = {}
    if options.logs and "logs" in info.capabilities:
        proof = "log-proof" in info.capabilities
        for path, path_info in closure.items():
            if path_info.deriver is not None and (found := find_build_log(path_info.deriver, options.store)):
                if proof:
                    # the server takes a log only with the .drv that built the path (docs/security.md)
                    drv = read_derivation(path_info.deriver, options.store)
                    if drv is None:
                        continue
                    derivations[path] = drv
                logs[path] = found
    realisations: dict[StorePath, list[LocalRealisation]] = {}
    if options.realisations and "realisations" in info.capabilities:
        realisations = await asyncio.to_thread(query_realisations, options.store.db_path, list(closure))
    traces: dict[StorePath, list[tuple[str, str]]] = {}
    if options.realisations and "build-trace" in info.capabilities:
        traces = await asyncio.to_thread(query_build_traces, options.store.db_path, list(closure))
    if "log-proof" in info.capabilities:
        # the server gives a realisation a build-trace entry under its deriver only if the .drv proves it its own
        for path in sorted({*realisations, *traces} - set(derivations), key=lambda p: p.path):
            deriver = closure[path].deriver if path in closure else None
            if deriver is not None and (drv := read_derivation(deriver, options.store)) is not None:
                derivations[path] = drv
    body = session_body(split.roots, closure, logs, realisations, derivations=derivations, build_traces=traces)
    if split.referenced:
        body["upstream"] = upstream_entries(split, everything)
    body["idempotency_key"] = idempotency_key(body)
    size = len(json.dumps(body, separators=(",", ":")))
    if size > info.limits.max_body_bytes:
        raise ClientError(
            f"the push request for {len(closure)} paths is {size} bytes, more than the server's limit of "
            f"{info.limits.max_body_bytes} (server.max_body_bytes); push fewer roots at a time"
        )
    return _Inputs(info, closure, logs, realisations, body, split, everything)


class _Session:
    """One upload session of a push, from opening to ``complete``."""

    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        api: ApiClient,
        options: PushOptions,
        inputs: _Inputs,
        progress: Progress,
        uploaded: list[Uploaded],
    ) -> None:
        self.http = http
        self.api = api
        self.options = options
        self.inputs = inputs
        self.progress = progress
        self.uploaded = uploaded
        self.session_id = ""

    def _pipeline(self, reporter: Reporter) -> UploadPipeline:
        limits = self.inputs.info.limits
        settings = self.options.settings
        if settings.max_parts != limits.max_parts:
            settings = replace(settings, max_parts=limits.max_parts)
        return UploadPipeline(
            http=self.http,
            api=self.api,
            session_id=self.session_id,
            store=self.options.store,
            reporter=reporter,
            progress=self.progress,
            settings=settings,
            policy=self.api.policy,
        )

    async def run(self) -> tuple[SessionPlan, CompleteAnswer]:
        answer, created = await self.api.create_session(self.inputs.body)
        self.session_id = answer.session_id
        if answer.state == "completed":
            # Every path was cached: the server completed the session when it opened it (docs/api.md).
            cached = sorted(self.inputs.closure, key=lambda p: p.path)
            logger.info("session %s: all %d paths are cached", self.session_id, len(cached))
            self.progress.plan(0, 0)
            done = CompleteAnswer(
                session_id=answer.session_id,
                state="completed",
                cached=[p.path for p in cached],
                roots=list(self.inputs.body["roots"]),
            )
            return SessionPlan(work=[], cached=cached, present=[]), done
        plan = plan_work(answer, self.inputs.closure, self.inputs.logs)
        logger.info(
            "%s session %s: %d paths, %d cached, %d to upload (%s of NAR)",
            "opened" if created else "resumed",
            self.session_id,
            len(self.inputs.closure),
            len(plan.cached),
            len(plan.work),
            format_bytes(plan.nar_bytes),
        )
        self.progress.plan(len(plan.work), plan.nar_bytes)
        reporter = Reporter(self.api, self.session_id)
        pipeline = self._pipeline(reporter)
        reporter.start()
        try:
            self.uploaded += await pipeline.run(plan.work)
            await reporter.stop()
            await reporter.flush()
            result = await self._complete(plan, reporter, pipeline)
        except NarMismatch:
            with contextlib.suppress(Exception):
                await reporter.stop(wait=False)
            await self._abort()
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await reporter.stop(wait=False)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await reporter.flush()  # keep what arrived, for the next try
            raise
        return plan, result

    async def _abort(self) -> None:
        try:
            await self.api.abort_session(self.session_id)
        except ClientError as exc:  # the session expires on its own; GC reclaims its objects
            logger.warning("could not abort session %s: %s", self.session_id, exc)
        else:
            logger.info("aborted session %s; nothing of it was published", self.session_id)

    async def _complete(self, plan: SessionPlan, reporter: Reporter, pipeline: UploadPipeline) -> CompleteAnswer:
        deadline = time.monotonic() + self.options.pending_timeout
        rounds = 0
        while True:
            try:
                return await self.api.complete(self.session_id, reporter.pending)
            except ObjectsPending as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(
                        f"gave up after {self.options.pending_timeout:.0f} s waiting for objects another "
                        f"push is uploading: {', '.join(exc.pending[:5])}; run the push again later"
                    ) from None
                logger.info(
                    "waiting %.0f s for %d objects another push is uploading",
                    exc.retry_after,
                    len(exc.pending),
                )
                await asyncio.sleep(min(max(exc.retry_after, 0.5), left))
            except ObjectsMissing as exc:
                rounds += 1
                if rounds > _MAX_MISSING_ROUNDS:
                    raise ClientError(
                        "the server still misses objects after uploading them again: "
                        + "; ".join(f"{m.key}: {m.reason}" for m in exc.missing[:5])
                    ) from None
                logger.info("the server misses %d objects; uploading them again", len(exc.missing))
                work = specs_to_work(exc.objects, self.inputs.closure, self.inputs.logs, plan.key_paths)
                self.progress.plan(len(work), sum(w.info.nar_size for w in work if w.needs_nar_pass))
                self.uploaded += await pipeline.run(work)
                await reporter.flush()


def _merge(uploaded: list[Uploaded]) -> list[Uploaded]:
    merged: dict[StorePath, Uploaded] = {}
    for item in uploaded:
        if item.path in merged:
            prev = merged[item.path]
            prev.kinds += [k for k in item.kinds if k not in prev.kinds]
            prev.file_size = item.file_size or prev.file_size
            prev.bytes_sent += item.bytes_sent
        else:
            merged[item.path] = item
    return sorted(merged.values(), key=lambda u: u.path.path)


async def push(http: aiohttp.ClientSession, api: ApiClient, options: PushOptions, progress: Progress) -> PushResult:
    """Push the closures of ``options.roots``; raises :class:`ClientError` (or a subclass) when it cannot."""
    if not options.roots:
        raise ClientError("nothing to push: give store paths, ./result links, or --stdin")
    if options.pin is not None and len(options.roots) != 1:
        raise ClientError(f"--pin needs exactly one path to pin, got {len(options.roots)}")
    started = time.monotonic()
    inputs = await _gather_inputs(api, options)
    progress.add_upstream(len(inputs.split.upstream))
    upstream = [p.path for p in inputs.split.upstream]
    upstream_bytes = inputs.split.upstream_nar_bytes(inputs.everything)
    if not inputs.closure:
        if options.pin is not None:
            raise ClientError(f"{options.roots[0]} is upstream's, not this cache's: it cannot be pinned here")
        logger.info("every path is signed by an upstream key: nothing to push")
        return PushResult(
            server=api.config.server_url,
            session_id="",
            roots=sorted(r.path for r in options.roots),
            paths=len(inputs.everything),
            uploaded=[],
            cached=[],
            already_uploaded=[],
            published=[],
            nar_bytes=0,
            bytes_sent=0,
            seconds=time.monotonic() - started,
            pin=None,
            upstream=upstream,
            upstream_nar_bytes=upstream_bytes,
        )
    if options.pin is not None and options.roots[0] not in inputs.closure:
        raise ClientError(f"{options.roots[0]} is upstream's, not this cache's: it cannot be pinned here")
    uploaded: list[Uploaded] = []
    for restart in range(_MAX_SESSION_RESTARTS + 1):
        session = _Session(http=http, api=api, options=options, inputs=inputs, progress=progress, uploaded=uploaded)
        try:
            plan, answer = await session.run()
            break
        except SessionClosed as exc:
            if restart == _MAX_SESSION_RESTARTS:
                raise ClientError(
                    f"upload session {session.session_id} was closed by the server: {exc.message}"
                ) from None
            logger.warning("session %s was closed (%s); opening a new one", session.session_id, exc.message)
    if options.pin is not None:
        try:
            await api.put_pin(options.pin, options.roots[0].path)
        except Niks3Error as exc:
            raise ClientError(f"the push completed, but pinning it as {options.pin!r} failed: {exc}") from exc
        logger.info("pinned %s as %r", options.roots[0], options.pin)
    merged = _merge(uploaded)
    return PushResult(
        server=api.config.server_url,
        session_id=answer.session_id,
        roots=sorted(r.path for r in options.roots),
        paths=len(inputs.everything),
        uploaded=merged,
        cached=sorted(p.path for p in plan.cached),
        already_uploaded=sorted(p.path for p in plan.present),
        published=answer.published,
        nar_bytes=sum(u.nar_size for u in merged if "nar" in u.kinds),
        bytes_sent=sum(u.bytes_sent for u in merged),
        seconds=time.monotonic() - started,
        pin=options.pin,
        upstream=upstream,
        upstream_nar_bytes=upstream_bytes,
    )


def summary_line(result: PushResult) -> str:
    """One line for people at the end of a push."""
    return (
        f"pushed {len(result.roots)} root(s), {result.paths} paths: {len(result.uploaded)} uploaded "
        f"({format_bytes(result.bytes_sent)} sent), {len(result.cached)} already cached, "
        + (
            f"{len(result.upstream)} upstream ({format_bytes(result.upstream_nar_bytes)} of NAR not uploaded), "
            if result.upstream
            else ""
        )
        + f"{len(result.published)} published in {result.seconds:.1f} s"
    )

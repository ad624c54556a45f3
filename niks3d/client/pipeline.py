"""Running the uploads of a session: NARs, listings and logs, in parallel within bounded CPU and memory.

Each path is one task. Compression runs in worker threads (zstandard releases the GIL), at most ``jobs`` at a
time, so NARs below the multipart threshold use every core; a multipart NAR, streamed one at a time, also uses
zstd's own threads. A NAR below the multipart threshold
is compressed into a :class:`~niks3d.client.spool.Spool` (memory, then a temporary file) and sent with one
``PUT``, at most ``uploads`` at a time; a large one streams through
:class:`~niks3d.client.multipart.MultipartUploader`, one at a time, its parts bounded by ``part_budget``.
Every uploaded object is reported through the :class:`~niks3d.client.reporter.Reporter`. The first failure
stops every task; a :class:`~niks3d.client.narstream.NarMismatch` propagates as it is, so that the push can
abort its session.
"""

from __future__ import annotations

__all__ = ["PipelineSettings", "UploadPipeline", "Uploaded", "run_all"]

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from niks3d.client.api import ApiClient
from niks3d.client.buildlogs import compress_log
from niks3d.client.models import ObjectSpec, PartUrl
from niks3d.client.multipart import MultipartUploader, PartUrls
from niks3d.client.narstream import NarOutcome, PushCancelled, stream_nar, zstd_threads_for
from niks3d.client.parts import parts_in_flight
from niks3d.client.plan import PathWork
from niks3d.client.progress import Progress, format_bytes
from niks3d.client.reporter import Reporter
from niks3d.client.retry import RetryPolicy
from niks3d.client.spool import Spool
from niks3d.client.store import LocalStore
from niks3d.client.upload import PresignedRequest, UploadFailed, put_presigned
from niks3d.errors import ClientError
from niks3d.nix.storepath import StorePath

T = TypeVar("T")


@dataclass(frozen=True)
class PipelineSettings:
    """Concurrency and compression settings of the upload pipeline."""

    jobs: int = os.cpu_count() or 1  # NARs compressed at once
    uploads: int = 8  # single PUTs in flight
    part_budget: int = 64 << 20  # bytes of multipart parts alive: waiting, uploading, being filled
    level: int = 3  # zstd level
    cpus: int = os.cpu_count() or 1
    spool_memory: int = 4 << 20  # bytes of a spool kept in memory before it goes to a temporary file
    max_parts: int = 10_000


@dataclass
class Uploaded:
    """What was uploaded for one path."""

    path: StorePath
    nar_size: int
    file_size: int = 0  # compressed NAR bytes uploaded (0 if the NAR was not uploaded)
    kinds: list[str] = field(default_factory=list)
    bytes_sent: int = 0


class UploadPipeline:
    """Uploads the objects of one session."""

    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        api: ApiClient,
        session_id: str,
        store: LocalStore,
        reporter: Reporter,
        progress: Progress,
        settings: PipelineSettings,
        policy: RetryPolicy,
    ) -> None:
        self.http = http
        self.api = api
        self.session_id = session_id
        self.store = store
        self.reporter = reporter
        self.progress = progress
        self.settings = settings
        self.policy = policy
        self.cancel = threading.Event()
        self._cpu = asyncio.Semaphore(max(1, settings.jobs))
        # Objects compressed but not yet uploaded wait in spools: bound them, or fast compression of many small
        # NARs would pile them all up in memory while the uploads catch up.
        self._spools = asyncio.Semaphore(max(1, settings.jobs) + max(1, settings.uploads))
        self._puts = asyncio.Semaphore(max(1, settings.uploads))
        self._multipart = asyncio.Semaphore(1)

    # -- helpers ------------------------------------------------------------------------------------------

    async def _fresh_spec(self, key: str, parts: list[int] | None = None) -> ObjectSpec:
        item: dict[str, object] = {"key": key}
        if parts:
            item["parts"] = parts
        for spec in await self.api.request_urls(self.session_id, [item]):
            if spec.key == key:
                return spec
        raise UploadFailed(f"the server gave no fresh URL for {key}")

    def _request_of(self, spec: ObjectSpec) -> PresignedRequest:
        if spec.action != "put" or not spec.url:
            raise UploadFailed(f"{spec.key}: expected a 'put' upload, the server says {spec.action!r}")
        return PresignedRequest(spec.url, spec.method, spec.headers)

    async def _put_spool(self, spec: ObjectSpec, spool: Spool, what: str) -> None:
        async def refresh() -> PresignedRequest:
            return self._request_of(await self._fresh_spec(spec.key))

        async with self._puts:
            await put_presigned(
                self.http,
                self._request_of(spec),
                spool.body,
                spool.size,
                what=what,
                policy=self.policy,
                refresh=refresh,
            )
        self.progress.add_sent(spool.size)

    def _new_spool(self) -> Spool:
        return Spool(self.settings.spool_memory)

    # -- per object ---------------------------------------------------------------------------------------

    async def _nar_put(self, work: PathWork, spec: ObjectSpec) -> NarOutcome:
        info = work.info
        with self._new_spool() as spool:
            async with self._cpu:
                outcome = await _off_loop(
                    info.nar_size,
                    stream_nar,
                    info,
                    self.store.real_path(info.path),
                    spool.write,
                    level=self.settings.level,
                    # One thread per NAR: up to `jobs` of them run at once, which keeps the cores busy already;
                    # zstd's worker threads on top cost ~25 MiB of buffers each and no less CPU (measured).
                    threads=0,
                    listing=work.ls is not None,
                    progress=self.progress.add_nar_bytes,
                    cancel=self.cancel,
                )
            await self._put_spool(spec, spool, f"the NAR of {info.path}")
        return outcome

    async def _nar_multipart(self, work: PathWork, spec: ObjectSpec) -> NarOutcome:
        info = work.info
        part_size = spec.part_size or 0
        urls = PartUrls(spec.parts, lambda numbers: self._more_parts(spec.key, numbers), self.settings.max_parts)
        uploader = MultipartUploader(
            self.http,
            spec,
            urls,
            what=f"the NAR of {info.path}",
            policy=self.policy,
            in_flight=parts_in_flight(part_size, self.settings.part_budget),
            on_uploaded=self.progress.add_sent,
        )
        threads = zstd_threads_for(info.nar_size, self.settings.cpus)

        def produce(sink: Callable[[bytes], None], cancel: threading.Event) -> NarOutcome:
            return stream_nar(
                info,
                self.store.real_path(info.path),
                sink,
                level=self.settings.level,
                threads=threads,
                listing=work.ls is not None,
                progress=self.progress.add_nar_bytes,
                cancel=cancel,
            )

        async with self._multipart, self._cpu:
            return await uploader.run(produce)

    async def _more_parts(self, key: str, numbers: list[int]) -> list[PartUrl]:
        spec = await self._fresh_spec(key, numbers)
        return list(spec.parts)

    async def _listing_only(self, work: PathWork) -> NarOutcome:
        info = work.info
        async with self._cpu:
            return await _off_loop(
                info.nar_size,
                stream_nar,
                info,
                self.store.real_path(info.path),
                None,
                listing=True,
                progress=self.progress.add_nar_bytes,
                cancel=self.cancel,
            )

    async def _log(self, work: PathWork, spec: ObjectSpec, done: Uploaded) -> None:
        assert work.log_file is not None
        with self._new_spool() as spool:
            async with self._cpu:
                await asyncio.to_thread(compress_log, work.log_file, spool.write, level=self.settings.level)
            await self._put_spool(spec, spool, f"the build log of {work.info.deriver}")
            self.reporter.add(spec.key, spool.size)
        done.kinds.append("log")
        done.bytes_sent += spool.size

    async def _path(self, work: PathWork) -> Uploaded:
        # A path takes its spool slot once, for all its objects: taking it again for the log, behind every
        # path still waiting for its NAR, would hold each path back until the last NAR of the push was done.
        # A multipart NAR streams through its own bounded parts instead (one such NAR at a time), and its
        # small objects need no slot of their own.
        multipart = work.nar is not None and work.nar.action == "multipart"
        async with contextlib.nullcontext() if multipart else self._spools:
            return await self._path_objects(work)

    async def _path_objects(self, work: PathWork) -> Uploaded:
        info = work.info
        done = Uploaded(info.path, info.nar_size)
        if work.needs_nar_pass:
            if work.nar is None:
                outcome = await self._listing_only(work)
            elif work.nar.action == "multipart":
                outcome = await self._nar_multipart(work, work.nar)
            else:
                outcome = await self._nar_put(work, work.nar)
            if work.nar is not None:
                urgent = work.nar.action == "multipart"
                self.reporter.add(work.nar.key, outcome.file_size, outcome.file_hash, urgent=urgent)
                done.kinds.append("nar")
                done.file_size = outcome.file_size
                done.bytes_sent += outcome.file_size
            if work.ls is not None:
                if outcome.listing is None:
                    raise ClientError(f"no listing was produced for {info.path}")
                with self._new_spool() as spool:
                    spool.write(outcome.listing)
                    await self._put_spool(work.ls, spool, f"the listing of {info.path}")
                self.reporter.add(work.ls.key, len(outcome.listing))
                done.kinds.append("ls")
                done.bytes_sent += len(outcome.listing)
        if work.log is not None:
            await self._log(work, work.log, done)
        self.progress.path_done(_describe(done))
        return done

    async def run(self, works: Sequence[PathWork]) -> list[Uploaded]:
        """Upload everything in ``works``; on the first failure stop the rest and raise it."""
        return await run_all([self._path(w) for w in works], on_failure=self.cancel.set)


# Work on at most this many bytes runs on the event loop itself: a worker thread's hand-over (a queue put, a
# wake-up, the GIL passed back and forth) costs more CPU than compressing a small NAR (bench/push.py, cost).
INLINE_BYTES = 64 << 10


async def _off_loop(size: int, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``: in a worker thread, or on the loop for inputs of at most INLINE_BYTES."""
    if size <= INLINE_BYTES:
        return func(*args, **kwargs)
    return await asyncio.to_thread(func, *args, **kwargs)


def _describe(done: Uploaded) -> str:
    what = "+".join(done.kinds) or "nothing"
    if done.file_size:
        sizes = f"NAR {format_bytes(done.nar_size)} -> {format_bytes(done.file_size)}"
        return f"uploaded {done.path} ({what}; {sizes})"
    return f"uploaded {done.path} ({what})"


async def run_all(coros: Sequence[Awaitable[Uploaded]], on_failure: Callable[[], None]) -> list[Uploaded]:
    """Run ``coros`` concurrently; at the first exception call ``on_failure``, cancel the rest, and raise it.

    When several fail at once, an error that is not a mere :class:`PushCancelled` (the echo of another
    failure) is raised.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, PushCancelled)), errors[0])
        return [t.result() for t in tasks]
    except BaseException:
        on_failure()
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

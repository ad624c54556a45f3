"""``/metrics`` in the Prometheus text format, with prometheus-client.

Two kinds of figures:

- counted in this process by :meth:`Metrics.middleware` and the read proxy: requests by route, method and
  status, their latency, bytes served by kind of file, responses cut off because S3 failed mid-body, and the
  narinfo cache's hits and lookups;
- read from PostgreSQL (through :class:`~niks3d.server.figures.FiguresReader`, at most once per 30 s, so a
  scrape costs the database almost nothing): published paths, objects and bytes by kind and state, upload
  sessions by state, garbage-collection runs and the latest one, the latest ``niks3d import`` and ``niks3d fsck``
  runs (whether one is running, when one last finished, what it found, and whether GC refuses to run because the
  newest import did not finish). These describe the whole cache, so every
  replica reports the same values.

Every series is in a registry of its own per application, so several daemons in one process (tests) do not
share counters. With ``server.metrics = "private"`` a scrape needs a token with the ``metrics`` scope, as
Bearer or as Basic password.
"""

from __future__ import annotations

__all__ = ["Metrics", "metrics", "metrics_key"]

import bisect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from niks3d.db.maintenance import MaintenanceSummary
from niks3d.server.auth import require
from niks3d.server.figures import FiguresReader
from niks3d.server.keys import config_key
from niks3d.server.narinfo_cache import NarinfoCache

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# From a narinfo answered from memory (~100 us) to a large NAR streamed for minutes.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
# The `le` labels, as prometheus-client writes them ("0.0001", "1.0", ..., "+Inf").
_BOUNDS = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _route(request: web.Request) -> str:
    """The route's pattern (``/api/v1/sessions/{session_id}``), or ``unmatched``: a bounded set of labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class _Latency:
    """One (route, method)'s latency histogram: counts per bucket (not yet cumulative) and the sum; the count
    is the +Inf bucket's cumulative value, which prometheus-client derives."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class Metrics:
    """The application's registry and the figures counted per request; see the module docstring.

    Requests are counted in plain ints and floats (two dict lookups, a bisect and three additions: a narinfo is
    answered in tens of microseconds, and prometheus-client's locked Counter and Histogram children cost several
    of them) and handed to prometheus-client as metric families when ``/metrics`` is scraped. The event loop is
    the only writer, so no lock is needed.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cache: NarinfoCache | None = None
        self.figures: FiguresReader | None = None
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], _Latency] = {}
        self.sent: dict[str, int] = {}
        self.truncated: dict[str, int] = {}
        self.registry.register(_RequestCollector(self))
        self.registry.register(_StateCollector(self))

    def watch(self, cache: NarinfoCache | None, figures: FiguresReader) -> None:
        """Report the narinfo cache's counters and the database figures."""
        self.cache = cache
        self.figures = figures

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in _METHODS else "other")
        counted = (*key, status)
        self.requests[counted] = self.requests.get(counted, 0) + 1
        latency = self.latency.get(key)
        if latency is None:
            latency = self.latency[key] = _Latency()
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def served(self, kind: str, sent: int, *, complete: bool = True) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + sent
        if not complete:
            self.truncated[kind] = self.truncated.get(kind, 0) + 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request; it runs outside the error middleware, so it sees the final status."""
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.observe(_route(request), request.method, status, time.perf_counter() - start)


def _by_kind(name: str, doc: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=("kind",))
    for kind, count in sorted(counts.items()):
        family.add_metric((kind,), count)
    return family


class _RequestCollector(Collector):
    """The per-request figures of :class:`Metrics`, as metric families at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        requests = CounterMetricFamily(
            "niks3d_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            labels=("route", "method", "status"),
        )
        for (route, method, status), count in sorted(owner.requests.items()):
            requests.add_metric((route, method, str(status)), count)
        yield requests
        duration = HistogramMetricFamily(
            "niks3d_http_request_duration_seconds",
            "Time from receiving a request to the end of its answer (for streamed files, the whole transfer)",
            labels=("route", "method"),
        )
        for (route, method), latency in sorted(owner.latency.items()):
            duration.add_metric(
                (route, method), list(zip(_BOUNDS, itertools.accumulate(latency.buckets), strict=True)), latency.total
            )
        yield duration
        yield _by_kind(
            "niks3d_proxy_sent_bytes",
            "Bytes of cache files sent by the read proxy, by kind (narinfo, nar, ls, log, realisation)",
            owner.sent,
        )
        yield _by_kind(
            "niks3d_proxy_truncated_responses",
            "Answers cut off after their first byte because S3 failed (the connection was closed)",
            owner.truncated,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _StateCollector(Collector):
    """Series computed at scrape time from the narinfo cache and the last database figures."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        cache = self._owner.cache
        if cache is not None:
            yield _gauge(
                "niks3d_narinfo_cache_live", "1 while the narinfo cache follows change notifications", cache.enabled
            )
            yield _gauge("niks3d_narinfo_cache_entries", "Narinfos held in memory", cache.entries)
            yield _gauge(
                "niks3d_narinfo_cache_negative_entries", "Recent misses held in memory", cache.negative_entries
            )
            yield _gauge("niks3d_narinfo_cache_bytes", "Memory charged to cached narinfos", cache.bytes)
            yield CounterMetricFamily("niks3d_narinfo_cache_hits", "Narinfo requests answered from memory", cache.hits)
            yield CounterMetricFamily("niks3d_narinfo_lookups", "Narinfo lookups in PostgreSQL", cache.lookups)
            yield CounterMetricFamily("niks3d_narinfo_cache_evictions", "Narinfos evicted for room", cache.evictions)
        figures = self._owner.figures.latest if self._owner.figures is not None else None
        if figures is None:
            return
        yield _gauge(
            "niks3d_figures_timestamp_seconds", "When the figures below were read", figures.taken_at.timestamp()
        )
        yield _gauge("niks3d_store_paths", "Published store paths", figures.paths)
        yield _gauge("niks3d_cache_bytes", "Bytes of every object checked present in the bucket", figures.stored_bytes)
        objects = GaugeMetricFamily("niks3d_objects", "Objects tracked in the bucket", labels=("kind", "state"))
        sizes = GaugeMetricFamily(
            "niks3d_object_bytes", "Bytes of objects tracked in the bucket", labels=("kind", "state")
        )
        for (kind, state), (count, size) in sorted(figures.objects.items()):
            objects.add_metric((kind, state), count)
            sizes.add_metric((kind, state), size)
        yield objects
        yield sizes
        sessions = GaugeMetricFamily("niks3d_upload_sessions", "Upload sessions recorded, by state", labels=("state",))
        for state, count in sorted(figures.sessions.items()):
            sessions.add_metric((state,), count)
        yield sessions
        runs = GaugeMetricFamily("niks3d_gc_runs", "Garbage-collection runs recorded, by state", labels=("state",))
        for state, count in sorted(figures.gc_runs.items()):
            runs.add_metric((state,), count)
        yield runs
        last = figures.last_gc
        if last is not None:
            yield _gauge(
                "niks3d_gc_last_run_start_timestamp_seconds", "Start of the latest GC run", last.started_at.timestamp()
            )
            if last.finished_at is not None:
                yield _gauge(
                    "niks3d_gc_last_run_end_timestamp_seconds", "End of the latest GC run", last.finished_at.timestamp()
                )
            yield _gauge("niks3d_gc_last_run_freed_bytes", "Bytes freed by the latest GC run", last.bytes_freed)
        yield from _maintenance(figures.maintenance)


_MAINTENANCE_COMMANDS = ("fsck", "import")


def _maintenance(runs: dict[str, MaintenanceSummary]) -> Iterator[Metric]:
    """The ``maintenance_runs`` figures (docs/proxy.md, docs/operations.md)."""
    running = GaugeMetricFamily(
        "niks3d_maintenance_running",
        "1 while a niks3d import or fsck runs (its run is recorded running and it holds the collector's lock)",
        labels=("command",),
    )
    started = GaugeMetricFamily(
        "niks3d_maintenance_last_run_start_timestamp_seconds", "Start of the newest run", labels=("command",)
    )
    finished = GaugeMetricFamily(
        "niks3d_maintenance_last_finished_timestamp_seconds",
        "End of the newest run that finished (not failed, stopped or killed)",
        labels=("command",),
    )
    problems = GaugeMetricFamily(
        "niks3d_maintenance_last_problems",
        "Problems the newest finished run left (for fsck: 0 when every invariant held)",
        labels=("command",),
    )
    for command in _MAINTENANCE_COMMANDS:
        run = runs.get(command)
        running.add_metric((command,), 1 if run is not None and run.running else 0)
        if run is None:
            continue
        started.add_metric((command,), run.started_at.timestamp())
        if run.finished_at is not None:
            finished.add_metric((command,), run.finished_at.timestamp())
        if run.problems is not None:
            problems.add_metric((command,), run.problems)
    yield from (running, started, finished, problems)
    last_import = runs.get("import")
    yield _gauge(
        "niks3d_import_unfinished",
        "1 while the newest niks3d import has not finished; garbage collection refuses to run until one does",
        1 if last_import is not None and last_import.state != "finished" else 0,
    )
    if last_import is not None and last_import.counts is not None:
        yield _gauge(
            "niks3d_import_last_paths_registered",
            "Store paths the newest finished import registered",
            last_import.counts.get("paths_registered", 0),
        )


metrics_key: web.AppKey[Metrics] = web.AppKey("metrics_key")


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``."""
    if request.app[config_key].settings.server.metrics == "private":
        require(request, "metrics")
    owner = request.app[metrics_key]
    if owner.figures is not None:
        await owner.figures.get()
    return web.Response(body=generate_latest(owner.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

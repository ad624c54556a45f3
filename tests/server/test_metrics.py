"""``/metrics``: Prometheus text with request counts and latencies, bytes served, and the cache's figures from
PostgreSQL; optionally behind a token with the metrics scope; off when configured so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import tomli_w
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.server.proxykit import basic, fetch, push_closure
from tests.server.test_proxy import _nar_key


def scrape(daemon: Any, headers: dict[str, str] | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    reply = fetch(daemon.url, "/metrics", headers=headers)
    assert reply.status == 200, reply.body
    assert reply.header("Content-Type") == CONTENT_TYPE_LATEST
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_requests_bytes_and_cache_figures_are_exported(daemon: Any, tmp_path: Path) -> None:
    paths = await push_closure(daemon, tmp_path, seed=51, n=3)
    for _ in range(3):
        for p in paths:
            assert fetch(daemon.url, f"/{p.hash}.narinfo").status == 200
    assert fetch(daemon.url, "/" + "1" * 32 + ".narinfo").status == 404
    nar = fetch(daemon.url, "/" + _nar_key(daemon, paths[0]))
    conn = await asyncpg.connect(daemon.dsn)
    try:
        await conn.execute(
            """INSERT INTO gc_runs (state, phase, params, dry_run, forced, owner, finished_at, bytes_freed)
               VALUES ('finished', 'done', '{}', false, false, 'test', now(), 12345)"""
        )
        stored = await conn.fetchval("SELECT sum(size) FROM objects WHERE state = 'present'")
    finally:
        await conn.close()

    m = scrape(daemon)
    requests = m["niks3d_http_requests_total"]
    narinfo_ok = (("method", "GET"), ("route", "/{narinfo}"), ("status", "200"))
    assert requests[narinfo_ok] == 3 * len(paths) + 1  # and the one _nar_key made
    assert requests[(("method", "GET"), ("route", "/{narinfo}"), ("status", "404"))] == 1
    assert requests[(("method", "POST"), ("route", "/api/v1/sessions"), ("status", "201"))] == 1
    buckets = m["niks3d_http_request_duration_seconds_bucket"]
    assert buckets[(("le", "+Inf"), ("method", "GET"), ("route", "/{narinfo}"))] == 3 * len(paths) + 2
    assert m["niks3d_proxy_sent_bytes_total"][(("kind", "nar"),)] == len(nar.body)
    assert m["niks3d_store_paths"][()] == len(paths)
    assert m["niks3d_cache_bytes"][()] == stored
    assert m["niks3d_objects"][(("kind", "narinfo"), ("state", "present"))] == len(paths)
    assert m["niks3d_upload_sessions"][(("state", "completed"),)] == 1
    assert m["niks3d_gc_runs"][(("state", "finished"),)] == 1
    assert m["niks3d_gc_last_run_freed_bytes"][()] == 12345
    assert m["niks3d_narinfo_lookups_total"][()] >= len(paths)
    assert m["niks3d_narinfo_cache_hits_total"][()] >= len(paths)


def _with_metrics_token(daemon: Any, tmp_path: Path) -> str:
    token = "metrics-token-0123456789abcdef"
    token_file = tmp_path / "metrics-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    daemon.settings["tokens"].append({"name": "prometheus", "file": str(token_file), "scopes": ["metrics"]})
    daemon.config_path.write_text(tomli_w.dumps(daemon.settings))
    return token


async def test_private_metrics_need_the_metrics_scope(
    make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = make_daemon_config(server={"metrics": "private"})
    token = _with_metrics_token(daemon, tmp_path)
    start_daemon(daemon)
    refused = fetch(daemon.url, "/metrics")
    assert refused.status == 401 and (refused.header("WWW-Authenticate") or "").startswith("Basic")
    assert fetch(daemon.url, "/metrics", headers=basic(daemon.tokens["reader"])).status == 403
    assert "niks3d_http_requests_total" in scrape(daemon, {"Authorization": f"Bearer {token}"})
    scrape(daemon, basic(token))
    scrape(daemon, basic(daemon.tokens["admin"]))


async def test_metrics_can_be_turned_off(start_daemon: Any) -> None:
    daemon = start_daemon(server={"metrics": "off"})
    assert fetch(daemon.url, "/metrics").status == 404
    assert fetch(daemon.url, "/nix-cache-info").status == 200

"""The per-request figures, counted in plain numbers, come out of /metrics as Prometheus counters and histograms.

A unit test of :class:`~niks3d.server.metrics.Metrics` alone (no daemon): what it exposes for a few observations,
read back with prometheus-client's own parser. test_metrics.py checks the same series on a running daemon.
"""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from niks3d.server.metrics import LATENCY_BUCKETS, Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_and_latency_are_exposed_as_counters_and_cumulative_histograms():
    metrics = Metrics()
    for seconds in (0.00005, 0.0002, 0.0002, 0.7, 100.0):
        metrics.observe("/{narinfo}", "GET", 200, seconds)
    metrics.observe("/{narinfo}", "GET", 404, 0.00001)
    metrics.observe("/{narinfo}", "BREW", 200, 0.001)  # unknown methods share one label value
    s = _samples(metrics)
    get = (("method", "GET"), ("route", "/{narinfo}"))
    assert s[("niks3d_http_requests_total", (*get, ("status", "200")))] == 5
    assert s[("niks3d_http_requests_total", (*get, ("status", "404")))] == 1
    assert s[("niks3d_http_requests_total", (("method", "other"), ("route", "/{narinfo}"), ("status", "200")))] == 1

    def bucket(le: str) -> float:
        return s[("niks3d_http_request_duration_seconds_bucket", tuple(sorted((*get, ("le", le)))))]

    assert bucket("0.0001") == 2  # 0.00005 and the 404's 0.00001
    assert bucket("0.00025") == 4
    assert bucket("0.5") == 4
    assert bucket("1.0") == 5
    assert bucket("60.0") == 5
    assert bucket("+Inf") == 6  # 100 s is beyond the last bound
    assert s[("niks3d_http_request_duration_seconds_count", get)] == 6
    assert s[("niks3d_http_request_duration_seconds_sum", get)] == pytest.approx(100.70046)
    les = [k[1] for k in s if k[0] == "niks3d_http_request_duration_seconds_bucket" and ("method", "GET") in k[1]]
    assert len(les) == len(LATENCY_BUCKETS) + 1


def test_bytes_served_and_cut_off_answers_are_counted_by_kind():
    metrics = Metrics()
    metrics.served("nar", 1000)
    metrics.served("nar", 500, complete=False)
    metrics.served("narinfo", 300)
    s = _samples(metrics)
    assert s[("niks3d_proxy_sent_bytes_total", (("kind", "nar"),))] == 1500
    assert s[("niks3d_proxy_sent_bytes_total", (("kind", "narinfo"),))] == 300
    assert s[("niks3d_proxy_truncated_responses_total", (("kind", "nar"),))] == 1
    assert ("niks3d_proxy_truncated_responses_total", (("kind", "narinfo"),)) not in s

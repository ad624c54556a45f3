"""Numbers and durations out of every range are a 400 at the API boundary, never a 500 (docs/api.md): JSON
integers of thousands of digits, non-finite numbers, and GC durations past what any computation can hold."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from niks3d.config import MAX_DURATION, parse_duration

HUGE_INT = "9" * 5000  # past Python's 4,300-digit limit for int(str)
NUMBERS = [HUGE_INT, "-" + HUGE_INT, "1e400", "-1e400", "Infinity", "-Infinity", "NaN"]


def _post(daemon: Any, path: str, raw: bytes, token: str, method: str = "POST") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        daemon.url + path,
        data=raw,
        method=method,
        headers={**daemon.headers(token), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("number", NUMBERS, ids=lambda n: n[:12])
def test_out_of_range_json_numbers_are_400_everywhere(daemon: Any, number: str) -> None:
    targets = [
        ("/api/v1/sessions", "pusher", "POST", f'{{"roots": [], "paths": [], "n": {number}}}'),
        ("/api/v1/gc", "collector", "POST", f'{{"dry_run": true, "older_than": {number}}}'),
        ("/api/v1/pins/p", "pinner", "PUT", f'{{"path": {number}}}'),
    ]
    for path, token, method, body in targets:
        status, answer = _post(daemon, path, body.encode(), token, method)
        assert status == 400, (path, status, answer)
        assert answer["error"] == "invalid_json", (path, answer)


@pytest.mark.parametrize(
    "value",
    [1e300, 10**30, "99999999999999999999w", "36501d", 36500 * 86400 + 1, "1e300"],
    ids=str,
)
def test_gc_durations_past_the_bound_are_400(daemon: Any, value: object) -> None:
    for field in ("older_than", "grace_period"):
        status, answer = _post(daemon, "/api/v1/gc", json.dumps({field: value, "dry_run": True}).encode(), "collector")
        assert status == 400, (field, value, status, answer)
        # Refused where it is read: as a number out of range, or as a duration out of range for its field.
        assert answer["error"] == "invalid_json" or field in answer["message"], answer


def test_the_duration_bound_itself_is_accepted() -> None:
    assert parse_duration("36500d") == MAX_DURATION
    assert parse_duration(MAX_DURATION.total_seconds()) == MAX_DURATION
    for bad in (float("inf"), float("nan"), 10**30, "99999999999999999999w", "\u0661\u0662s"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)

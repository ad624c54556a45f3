"""The ``build_trace`` entries of a pushed path (docs/api.md): parsed strictly, turned into the
``build-trace-v2/`` keys the path claims, together with those derived from its realisations and deriver, and
encoded only when present (a request without them keeps its fingerprint)."""

from __future__ import annotations

from typing import Any

import pytest

from niks3d.errors import InvalidRequest
from niks3d.nix.bucketkeys import build_trace_key
from niks3d.uploads.objects import build_trace_outputs, wanted_objects
from niks3d.uploads.request import parse_session_request

STORE = "/nix/store/"
OUT = f"{STORE}{'b' * 32}-b"
DERIVER = f"{'c' * 32}-b.drv"
OTHER = f"{'d' * 32}-b.drv"
RID = "sha256:" + "e" * 64 + "!out"


def _path(**more: Any) -> dict[str, Any]:
    return {"path": OUT, "nar_hash": "sha256:" + "1" * 52, "nar_size": 10, "references": [], **more}


def _parse(**more: Any) -> Any:
    return parse_session_request({"roots": [OUT], "paths": [_path(**more)]}).paths[0]


def test_entries_become_keys_beside_those_of_the_realisations() -> None:
    path = _parse(
        deriver=STORE + DERIVER,
        realisations=[{"id": RID, "out_path": OUT}],
        build_trace=[{"drv_path": STORE + OTHER, "output": "dev"}, {"drv_path": STORE + DERIVER, "output": "out"}],
    )
    assert path.build_trace == ((DERIVER, "out"), (OTHER, "dev"))
    expected = sorted(
        [(build_trace_key(DERIVER, "out"), DERIVER, "out"), (build_trace_key(OTHER, "dev"), OTHER, "dev")]
    )
    assert build_trace_outputs(path) == expected  # the deriver's "out" once, though named twice
    claimed = [o.key for o in wanted_objects(path, published=False) if o.kind == "realisation"]
    assert sorted(claimed) == sorted([f"realisations/{RID}.doi", *(key for key, _, _ in expected)])


def test_without_a_deriver_only_the_sent_entries_count() -> None:
    assert build_trace_outputs(_parse(realisations=[{"id": RID, "out_path": OUT}])) == []
    path = _parse(build_trace=[{"drv_path": STORE + OTHER, "output": "out"}])
    assert build_trace_outputs(path) == [(build_trace_key(OTHER, "out"), OTHER, "out")]


def test_the_field_is_encoded_only_when_present() -> None:
    plain = parse_session_request({"roots": [OUT], "paths": [_path()]})
    assert "build_trace" not in plain.to_json()["paths"][0]
    traced = parse_session_request(
        {"roots": [OUT], "paths": [_path(build_trace=[{"drv_path": STORE + OTHER, "output": "out"}])]}
    )
    assert traced.to_json()["paths"][0]["build_trace"] == [{"drv_path": STORE + OTHER, "output": "out"}]
    assert type(traced).from_json(traced.to_json()).paths[0].build_trace == ((OTHER, "out"),)


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"drv_path": OUT, "output": "out"}, "build_trace[0].drv_path", "is not a derivation"),
        ({"drv_path": "/tmp/x.drv", "output": "out"}, "build_trace[0].drv_path", ""),
        ({"drv_path": STORE + OTHER, "output": "a/b"}, "build_trace[0].output", "output name"),
        ({"drv_path": STORE + OTHER, "output": 7}, "build_trace[0].output", "must be a string"),
        ({"drv_path": STORE + OTHER}, "build_trace[0]", "output"),
        ({"drv_path": STORE + OTHER, "output": "out", "out_path": OUT}, "build_trace[0]", "out_path"),
        ("out", "build_trace[0]", ""),
    ],
)
def test_bad_entries_are_refused_naming_the_field(entry: object, field: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _parse(build_trace=[entry])
    text = str(caught.value) + repr(getattr(caught.value, "details", ""))
    assert field in text and message in text, text


def test_at_most_64_entries() -> None:
    entries = [{"drv_path": STORE + OTHER, "output": f"o{i}"} for i in range(65)]
    with pytest.raises(InvalidRequest, match="build_trace"):
        _parse(build_trace=entries)

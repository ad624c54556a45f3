"""The session request, its idempotency key, and turning the answer into work (plan.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from niks3d.client.closure import PathInfo
from niks3d.client.models import ObjectSpec, SessionAnswer
from niks3d.client.plan import idempotency_key, plan_work, session_body, specs_to_work
from niks3d.client.realisations import LocalRealisation
from niks3d.errors import ClientError
from niks3d.nix import nix32
from niks3d.nix.storepath import StorePath

A = StorePath.parse("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a")
B = StorePath.parse("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b")
C = StorePath.parse("/nix/store/cccccccccccccccccccccccccccccccc-c")
DRV = StorePath.parse("/nix/store/dddddddddddddddddddddddddddddddd-a.drv")
SHARED = bytes(32)


def _closure(order=(A, B, C)):
    infos = {
        A: PathInfo(A, bytes([1] * 32), 100, (B, A), DRV, None),
        B: PathInfo(B, SHARED, 200, (C,), None, None),
        C: PathInfo(C, SHARED, 200, (), None, "fixed:r:sha256:" + nix32.encode(SHARED)),
    }
    return {p: infos[p] for p in order}


def _key(closure, roots=(A,), logs=None, realisations=None):
    return idempotency_key(session_body(list(roots), closure, logs or {}, realisations or {}))


def test_idempotency_key_is_stable_whatever_the_order():
    assert _key(_closure((A, B, C))) == _key(_closure((C, A, B)))
    assert _key(_closure(), roots=(A, B)) == _key(_closure(), roots=(B, A, B))


def test_idempotency_key_fits_the_api_pattern():
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", _key(_closure()))


def test_idempotency_key_changes_with_the_request():
    base = _key(_closure())
    assert _key(_closure(), roots=(A, B)) != base
    assert _key(_closure(), logs={A: Path("/log")}) != base
    real = {A: [LocalRealisation("sha256:" + "0" * 64 + "!out", A)]}
    assert _key(_closure(), realisations=real) != base
    closure = _closure()
    closure[B] = PathInfo(B, SHARED, 201, (C,), None, None)
    assert _key(closure) != base


def test_the_key_does_not_cover_itself():
    body = session_body([A], _closure(), {}, {})
    key = idempotency_key(body)
    assert idempotency_key({**body, "idempotency_key": key}) == key


def test_session_body_has_every_field_the_api_wants():
    body = session_body([A], _closure(), {A: Path("/log")}, {})
    assert body["roots"] == [A.path]
    first = body["paths"][0]
    assert first == {
        "path": A.path,
        "nar_hash": "sha256:" + nix32.encode(bytes([1] * 32)),
        "nar_size": 100,
        "references": [A.path, B.path],
        "deriver": DRV.path,
        "ca": None,
        "listing": True,
        "log": True,
        "realisations": [],
    }
    assert [p["path"] for p in body["paths"]] == sorted(p.path for p in (A, B, C))


def _spec(kind, key, action="put", **extra):
    spec = {"kind": kind, "key": key, "action": action, **extra}
    if action == "put":
        spec.setdefault("url", f"http://s3/{key}")
    return spec


def _answer(paths):
    return SessionAnswer.model_validate({"session_id": "s", "paths": paths})


def test_plan_uploads_a_shared_nar_once_and_skips_cached_and_present_objects():
    nar = "nar/" + nix32.encode(SHARED) + ".nar.zst"
    answer = _answer(
        [
            {"path": A.path, "status": "cached"},
            {"path": B.path, "status": "upload", "objects": [_spec("nar", nar), _spec("ls", f"{B.hash}.ls")]},
            {
                "path": C.path,
                "status": "upload",
                "objects": [_spec("nar", nar), _spec("ls", f"{C.hash}.ls", "none", reason="present")],
            },
        ]
    )
    plan = plan_work(answer, _closure(), {})
    assert plan.cached == [A]
    assert [w.info.path for w in plan.work] == [B]
    assert plan.work[0].nar.key == nar and plan.work[0].ls.key == f"{B.hash}.ls"
    assert plan.present == [C]
    assert plan.waiting == {f"{C.hash}.ls": "present"}
    assert plan.key_paths[nar] == B
    assert plan.nar_bytes == 200


def test_plan_sorts_big_nars_first():
    answer = _answer(
        [
            {
                "path": A.path,
                "status": "upload",
                "objects": [_spec("nar", "nar/" + nix32.encode(bytes([1] * 32)) + ".nar.zst")],
            },
            {
                "path": B.path,
                "status": "upload",
                "objects": [_spec("nar", "nar/" + nix32.encode(SHARED) + ".nar.zst")],
            },
        ]
    )
    assert [w.info.path for w in plan_work(answer, _closure(), {}).work] == [B, A]


def test_a_log_the_push_did_not_offer_is_an_error():
    answer = _answer([{"path": A.path, "status": "upload", "objects": [_spec("log", f"log/{DRV.basename}")]}])
    with pytest.raises(ClientError, match="build log"):
        plan_work(answer, _closure(), {})
    work = plan_work(answer, _closure(), {A: Path("/var/log/x.bz2")}).work[0]
    assert work.log_file == Path("/var/log/x.bz2")


def test_an_answer_about_a_foreign_path_is_refused():
    foreign = "/nix/store/" + "f" * 32 + "-foreign"
    with pytest.raises(ClientError, match="not part of this push"):
        plan_work(_answer([{"path": foreign, "status": "cached"}]), _closure(), {})


def test_missing_objects_map_back_to_their_paths():
    ls_key = f"{B.hash}.ls"
    plan = plan_work(_answer([{"path": B.path, "status": "upload", "objects": [_spec("ls", ls_key)]}]), _closure(), {})
    work = specs_to_work([ObjectSpec.model_validate(_spec("ls", ls_key))], _closure(), {}, plan.key_paths)
    assert [(w.info.path, w.ls.key) for w in work] == [(B, ls_key)]
    with pytest.raises(ClientError, match="belongs to no path"):
        specs_to_work([ObjectSpec.model_validate(_spec("ls", f"{C.hash}.ls"))], _closure(), {}, plan.key_paths)

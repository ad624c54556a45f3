"""The object plan a parsed request carries (uploads/plan.py): worked out once, with the parse, and the same
answers the steps of a push used to work out each for itself."""

from __future__ import annotations

from niks3d.nix.bucketkeys import ls_key, nar_key, narinfo_key, realisation_key
from niks3d.nix.hashes import parse_sha256
from niks3d.uploads.request import parse_session_request

STORE = "/nix/store/"
A, B, C, OUT = "a" * 32, "b" * 32, "c" * 32, "d" * 32
NAR_1, NAR_2 = "sha256:" + "1" * 52, "sha256:" + "0" * 51 + "1"
RID = "sha256:" + "e" * 64 + "!out"


def _request():  # type: ignore[no-untyped-def]
    return parse_session_request(
        {
            "roots": [f"{STORE}{B}-b"],
            "paths": [
                # two paths with one NAR (same contents, other names)
                {"path": f"{STORE}{A}-a", "nar_hash": NAR_1, "nar_size": 10, "references": [], "listing": False},
                {
                    "path": f"{STORE}{B}-b",
                    "nar_hash": NAR_1,
                    "nar_size": 10,
                    "references": [f"{STORE}{A}-a", f"{STORE}{OUT}-outside"],
                    "realisations": [{"id": RID, "out_path": f"{STORE}{B}-b"}],
                },
                {"path": f"{STORE}{C}-c", "nar_hash": NAR_2, "nar_size": 1 << 30, "references": [f"{STORE}{B}-b"]},
            ],
        }
    )


def test_the_plan_is_worked_out_with_the_parse() -> None:
    plan = _request().plan
    nar_1, nar_2 = nar_key(parse_sha256(NAR_1)), nar_key(parse_sha256(NAR_2))
    assert {h: [o.key for o in objs] for h, objs in plan.objects.items()} == {
        A: [narinfo_key(A), nar_1],
        B: [narinfo_key(B), nar_1, ls_key(B), realisation_key(RID)],
        C: [narinfo_key(C), nar_2, ls_key(C)],
    }
    # what clients upload, once each and in key order; narinfos, realisations and listings are the server's
    assert list(plan.uploads) == sorted({nar_1, nar_2})
    assert [o.key for o in plan.client_uploads(B)] == [nar_1]
    assert {k: p.path.name for k, p in plan.nars.items()} == {nar_1: "a", nar_2: "c"}
    assert [(h, p.name) for h, p in plan.outside] == [(OUT, "outside")]
    assert {h: p.name for h, p in plan.names.items()} == {A: "a", B: "b", C: "c", OUT: "outside"}
    assert plan.publication_locks == tuple(
        sorted([narinfo_key(A), narinfo_key(B), narinfo_key(C), realisation_key(RID)] + [ls_key(h) for h in (A, B, C)])
    )  # every path's listing, whether it asked for one or not (docs/security.md, rule 8)
    assert plan.large_nars(1 << 20) == [nar_2]
    assert plan.listings == {A: ls_key(A), B: ls_key(B), C: ls_key(C)}  # A asked for none: its key still (rule 8)


def test_a_stored_request_parsed_again_has_the_same_plan() -> None:
    first = _request()
    again = type(first).from_text(first.encoded()[1])
    assert again == first  # the plan is not part of the request's identity ...
    assert again.plan == first.plan  # ... and follows from it

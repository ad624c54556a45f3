"""The client's upstream filter as pure logic: which paths a signature by an upstream key leaves to upstream."""

from __future__ import annotations

import hashlib

import pytest

from niks3d.client.closure import PathInfo, parse_path_info_json
from niks3d.client.models import ServerInfo
from niks3d.client.upstream import choose_keys, split_upstream, upstream_entries
from niks3d.errors import ClientError
from niks3d.nix.signing import SecretKey, fingerprint
from niks3d.nix.storepath import StorePath

UP = SecretKey.generate("upstream-1")


def _path(name: str) -> StorePath:
    digest = hashlib.sha256(name.encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    return StorePath.parse("/nix/store/" + "".join(alphabet[int(c, 16)] for c in digest[:32]) + "-" + name)


def _info(name: str, refs: list[StorePath], *, signed: bool = False, size: int = 100) -> PathInfo:
    path = _path(name)
    nar_hash = hashlib.sha256(name.encode()).digest()
    sigs: tuple[str, ...] = ()
    if signed:
        sigs = (UP.sign(fingerprint(path.path, nar_hash, size, [r.path for r in refs])),)
    return PathInfo(path, nar_hash, size, tuple(refs), None, None, sigs)


def _closure(*infos: PathInfo) -> dict[StorePath, PathInfo]:
    return {i.path: i for i in infos}


def test_paths_reached_only_through_upstream_paths_are_not_pushed() -> None:
    libc = _info("libc", [], signed=True)
    # built locally and identical to upstream's, but the store has no upstream signature for it
    helper = _info("helper", [])
    lib = _info("lib", [libc.path, helper.path], signed=True)
    app = _info("app", [lib.path, _path("app")])
    closure = _closure(libc, helper, lib, app)
    split = split_upstream([app.path], closure, [UP.public_key()])
    assert list(split.pushed) == [app.path] and split.roots == (app.path,)
    assert list(split.referenced) == [lib.path]
    assert set(split.upstream) == {libc.path, helper.path, lib.path}
    assert split.upstream_nar_bytes(closure) == 300
    (entry,) = upstream_entries(split, closure)
    assert entry["path"] == lib.path.path and entry["signatures"] == list(lib.signatures)
    assert entry["references"] == sorted([libc.path.path, helper.path.path])


def test_a_signature_over_other_facts_or_by_another_key_does_not_count() -> None:
    dep = _info("dep", [], signed=True)
    forged = PathInfo(dep.path, dep.nar_hash, dep.nar_size + 1, (), None, None, dep.signatures)
    other_key = SecretKey.generate("upstream-1")  # the same name, another key
    app = _info("app", [dep.path])
    for candidate in (forged, PathInfo(dep.path, dep.nar_hash, dep.nar_size, (), None, None, ("garbage",))):
        split = split_upstream([app.path], _closure(candidate, app), [UP.public_key()])
        assert set(split.pushed) == {app.path, dep.path} and not split.upstream
    split = split_upstream([app.path], _closure(dep, app), [other_key.public_key()])
    assert set(split.pushed) == {app.path, dep.path}


def test_an_upstream_root_is_not_pushed_and_no_keys_push_everything() -> None:
    dep = _info("dep", [], signed=True)
    closure = _closure(dep)
    split = split_upstream([dep.path], closure, [UP.public_key()])
    assert split.pushed == {} and split.roots == () and split.upstream == (dep.path,)
    split = split_upstream([dep.path], closure, [])
    assert list(split.pushed) == [dep.path] and not split.upstream


def test_keys_come_from_the_server_unless_overridden_or_disabled() -> None:
    server_key = UP.public_key().to_text()
    other = SecretKey.generate("other-1").public_key().to_text()
    info = ServerInfo(service="niks3d", api_versions=[1], capabilities=["upstream"], upstream_keys=[server_key])
    assert [k.to_text() for k in choose_keys(info, [], enabled=True)] == [server_key]
    assert [k.to_text() for k in choose_keys(info, [other], enabled=True)] == [other]
    assert choose_keys(info, [other], enabled=False) == ()
    old = ServerInfo(service="niks3d", api_versions=[1], capabilities=[], upstream_keys=[server_key])
    assert choose_keys(old, [], enabled=True) == ()
    with pytest.raises(ClientError, match="--upstream-key"):
        choose_keys(info, ["not-a-key"], enabled=True)


def test_path_info_signatures_in_both_json_shapes() -> None:
    entry = {
        "narHash": "sha256-" + "A" * 43 + "=",
        "narSize": 8,
        "references": [],
    }
    path = _path("x").path
    old = parse_path_info_json([{**entry, "path": path, "signatures": ["b:x", "a:y", "a:y"]}])
    assert next(iter(old.values())).signatures == ("a:y", "b:x")
    new = parse_path_info_json({path: {**entry, "signatures": [{"keyName": "k", "sig": "c2ln"}]}})
    assert next(iter(new.values())).signatures == ("k:c2ln",)
    none = parse_path_info_json({path: entry})
    assert next(iter(none.values())).signatures == ()
    with pytest.raises(ClientError, match="signatures"):
        parse_path_info_json({path: {**entry, "signatures": [42]}})

"""`niks3 push` and `niks3 pins` end to end: the real client against the real daemon, PostgreSQL and
SeaweedFS, with Nix 2.8 substituting what was pushed (signatures checked) from the bucket."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import zstandard

from niks3d.client.main import main
from niks3d.nix.signing import SecretKey
from niks3d.nix.storepath import StorePath
from testkit.nixfixtures import build_ca_closure, build_expr, make_closure
from tests.client.storekit import build_fresh, corrupt, delete
from tests.fixtures.environ import require_service
from tests.server.bucketview import bucket_keys, get_object

pytestmark = [pytest.mark.nix, pytest.mark.postgres, pytest.mark.s3]
NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _token_file(tmp_path: Path, daemon: Any, name: str = "pusher") -> str:
    path = tmp_path / f"client-token-{name}"
    path.write_text(daemon.tokens[name] + "\n")
    path.chmod(0o600)
    return str(path)


def _niks3(daemon: Any, tmp_path: Path, capsys: Any, *args: str, token: str = "pusher") -> tuple[int, str, str]:
    code = main([*args, "--server", daemon.url, "--token-file", _token_file(tmp_path, daemon, token)])
    out, err = capsys.readouterr()
    return code, out, err


def _push(daemon: Any, tmp_path: Path, capsys: Any, *args: str, token: str = "pusher") -> tuple[int, dict, str]:
    code, out, err = _niks3(daemon, tmp_path, capsys, "push", "--json", "--no-progress", *args, token=token)
    return code, (json.loads(out) if code == 0 else {}), err


def _closure(*paths: str) -> set[str]:
    out = subprocess.run(["nix-store", "--query", "--requisites", *paths], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def _substitute(daemon: Any, tmp_path: Path, paths: list[str], public_keys: list[str]) -> subprocess.CompletedProcess:
    """``nix copy`` from the bucket (read as a plain HTTP binary cache) into a fresh chroot store."""
    cache = f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{time.monotonic_ns()}")}
    argv = [
        *NIX,
        "copy",
        "--from",
        cache,
        "--to",
        str(tmp_path / f"client-{time.monotonic_ns()}"),
        "--option",
        "substituters",
        "",
        "--option",
        "trusted-public-keys",
        " ".join(public_keys),
        *paths,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)


async def _sessions(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["state"] for r in await conn.fetch("SELECT state FROM upload_sessions ORDER BY created_at")]
    finally:
        await conn.close()


def test_pushed_closures_are_substituted_by_nix_with_signatures_checked(start_daemon, nix_fixtures, tmp_path, capsys):
    daemon = start_daemon()
    roots = [
        nix_fixtures.prototest,
        nix_fixtures.tricky,
        nix_fixtures.odd_names,
        nix_fixtures.large,
        nix_fixtures.with_log,
    ]
    code, doc, err = _push(daemon, tmp_path, capsys, *roots)
    assert code == 0, err
    closure = _closure(*roots)
    assert set(doc["published"]) == closure == {u["path"] for u in doc["uploaded"]}, err
    assert sorted(doc["roots"]) == sorted(roots)
    assert asyncio.run(_sessions(daemon.dsn)) == ["completed"]  # one session, whatever the number of roots
    large = next(u for u in doc["uploaded"] if u["path"] == nix_fixtures.large)
    assert large["nar_size"] >= daemon.settings["s3"]["multipart_threshold"]  # went up as a multipart upload

    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    copied = _substitute(daemon, tmp_path, roots, keys)
    assert copied.returncode == 0, copied.stderr
    impostor = SecretKey.generate(daemon.signing_keys[0].name).public_key().to_text()  # same name, other key
    wrong = _substitute(daemon, tmp_path, [nix_fixtures.protodep], [impostor])
    assert wrong.returncode != 0 and "lacks a valid signature" in wrong.stderr, wrong.stderr

    drv = StorePath.parse(nix_fixtures.with_log_drv)
    body, response = get_object(daemon.s3, f"log/{drv.basename}")
    assert response.get("ContentEncoding") == "zstd"
    want = subprocess.run(["nix-store", "--read-log", drv.path], check=True, capture_output=True).stdout
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == want, err


def test_a_second_push_uploads_nothing(start_daemon, nix_fixtures, tmp_path, capsys):
    daemon = start_daemon()
    code, first, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest)
    assert code == 0, err
    assert len(first["uploaded"]) == 2
    code, again, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest)
    assert code == 0, err
    assert again["uploaded"] == [] and again["bytes_sent"] == 0
    code, bigger, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest, nix_fixtures.graph.top)
    assert code == 0, err
    assert {u["path"] for u in bigger["uploaded"]} == set(nix_fixtures.graph.paths())
    assert set(bigger["cached"]) == {nix_fixtures.prototest, nix_fixtures.protodep}


@pytest.fixture
def fresh_paths(tmp_path):
    created: list[str] = []

    def make(name: str, script: str) -> str:
        path = build_fresh(tmp_path / "build", name, script)
        created.append(path)
        return path

    yield make
    for path in reversed(created):
        delete(path)


def _uploaded_lines(err: str) -> set[tuple[str, str]]:
    pairs = set()
    for path, kinds in re.findall(r"^uploaded (/nix/store/\S+) \(([a-z+]+)", err, re.MULTILINE):
        pairs.update((path, kind) for kind in kinds.split("+"))
    return pairs


def test_an_interrupted_push_resumes_without_uploading_again(start_daemon, tmp_path, capsys, request):
    daemon = start_daemon()
    paths = make_closure(tmp_path / "build", secrets.token_hex(6), n_paths=9, total_bytes=27 << 20)
    request.addfinalizer(lambda: delete(*paths))
    root = paths[0]
    token = _token_file(tmp_path, daemon)
    argv = [
        sys.executable,
        "-c",
        "from niks3d.client.main import main; raise SystemExit(main())",
        "push",
        root,
        "--server",
        daemon.url,
        "--token-file",
        token,
        "--no-progress",
        "-j",
        "1",
        "--uploads",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as first:
        assert first.stderr is not None
        lines: list[str] = []
        for line in first.stderr:
            lines.append(line)
            if line.startswith("uploaded "):
                first.send_signal(signal.SIGINT)
                break
        lines += first.stderr.readlines()
        assert first.wait(60) == 130, "".join(lines)
    before = _uploaded_lines("".join(lines))
    assert before, "".join(lines)
    assert asyncio.run(_sessions(daemon.dsn)) == ["open"]  # left open for the next try

    code, doc, err = _push(daemon, tmp_path, capsys, root)
    assert code == 0, err
    after = {(u["path"], kind) for u in doc["uploaded"] for kind in u["objects"]}
    assert not before & after, f"uploaded twice: {before & after}"
    assert {p for p, _ in after} < set(paths)  # it resumed: what the first run finished was not redone
    assert set(doc["published"]) == set(paths)
    assert asyncio.run(_sessions(daemon.dsn)) == ["completed"]  # the same session, resumed


@pytest.mark.parametrize("size", [4096, 12 << 20], ids=["put", "multipart"])
def test_a_corrupt_store_path_is_refused_and_nothing_is_published(start_daemon, fresh_paths, tmp_path, capsys, size):
    daemon = start_daemon()
    good = fresh_paths("good-dep", "mkdir $out; echo fine > $out/ok")
    bad = fresh_paths("corrupt", f"mkdir $out; echo {good} > $out/ref; head -c {size} /dev/urandom > $out/blob")
    blob = Path(bad) / "blob"
    corrupt(bad, "blob", blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    code, _, err = _push(daemon, tmp_path, capsys, bad)
    assert code == 1
    assert f"niks3: error: refusing to push {bad}: its NAR hashes to sha256:" in err
    assert asyncio.run(_sessions(daemon.dsn)) == ["aborted"]
    keys = bucket_keys(daemon.s3)
    assert not any(k.endswith(".narinfo") for k in keys), keys  # not even the good dependency


def test_tokens_without_the_right_scope_are_refused_clearly(start_daemon, nix_fixtures, tmp_path, capsys):
    daemon = start_daemon()
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.protodep, token="reader")
    assert code == 1 and "lacks the 'push' scope" in err and daemon.tokens["reader"] not in err
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.protodep, "--pin", "p")
    assert code == 1 and "the push completed, but pinning it as 'p' failed" in err and "lacks the 'pin' scope" in err
    daemon.tokens["bogus"] = "not-a-token"
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.protodep, token="bogus")
    assert code == 1 and "refused the token from" in err


def test_push_pin_and_the_pins_commands(start_daemon, nix_fixtures, tmp_path, capsys, monkeypatch):
    daemon = start_daemon()
    (tmp_path / "result").symlink_to(nix_fixtures.prototest)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("./result\n"))
    code, doc, err = _push(daemon, tmp_path, capsys, "--stdin", "--pin", "release", token="admin")
    assert code == 0, err
    assert doc["pin"] == "release" and doc["roots"] == [nix_fixtures.prototest]

    code, out, err = _niks3(daemon, tmp_path, capsys, "pins", "list", "--json", token="pinner")
    assert code == 0, err
    assert [(p["name"], p["path"]) for p in json.loads(out)["pins"]] == [("release", nix_fixtures.prototest)]
    code, _, err = _niks3(daemon, tmp_path, capsys, "pins", "create", "dep", nix_fixtures.protodep, token="pinner")
    assert code == 0, err
    code, out, _ = _niks3(daemon, tmp_path, capsys, "pins", "list", token="pinner")
    assert re.search(r"^dep\s+" + re.escape(nix_fixtures.protodep), out, re.MULTILINE)
    code, _, err = _niks3(daemon, tmp_path, capsys, "pins", "create", "x", nix_fixtures.tricky, token="pinner")
    assert code == 1 and "push it first" in err  # not pushed: the server refuses
    for _ in range(2):  # deleting twice is fine: the second one finds nothing
        code, _, err = _niks3(daemon, tmp_path, capsys, "pins", "delete", "dep", token="pinner")
        assert code == 0, err
    assert "there was no pin 'dep'" in err
    code, _, err = _push(daemon, tmp_path, capsys, nix_fixtures.prototest, nix_fixtures.protodep, "--pin", "two")
    assert code == 1 and "--pin needs exactly one path" in err


def test_realisations_of_ca_derivations_are_pushed_from_a_chroot_store(start_daemon, tmp_path, capsys, pytestconfig):
    root = tmp_path / "ca-store"
    build = build_ca_closure(tmp_path, root, "e2e-")
    if build.returncode != 0:  # a skip only without NIKS3_REQUIRE_SERVICES=1 (CI fails instead)
        require_service(pytestconfig, "a chroot store that builds CA derivations", build.stderr[-500:])
    out_path = build.stdout.strip()
    daemon = start_daemon()
    code, doc, err = _push(daemon, tmp_path, capsys, "--store", str(root), out_path)
    assert code == 0, err
    assert len(doc["published"]) == 2
    doi = sorted(k for k in bucket_keys(daemon.s3) if k.startswith("realisations/"))
    assert doi and all(re.fullmatch(r"realisations/sha256:[0-9a-f]{64}!out\.doi", k) for k in doi)
    bodies = [json.loads(get_object(daemon.s3, k)[0]) for k in doi]
    assert {b["outPath"] for b in bodies} >= {StorePath.parse(out_path).basename}


def _shared_leaf_closures(workdir: Path) -> tuple[str, str, str]:
    salt = secrets.token_hex(6)
    expr = f"""
let
  mk = name: script: derivation {{
    inherit name; salt = "{salt}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];
  }};
  leaf = mk "shared-leaf" "mkdir $out; head -c 41943040 /dev/urandom > $out/blob";
in [ (mk "root-a" "mkdir $out; echo ${{leaf}} > $out/ref") (mk "root-b" "mkdir $out; echo ${{leaf}} > $out/ref") leaf ]
"""
    root_a, root_b, leaf = build_expr(expr, workdir)
    return root_a, root_b, leaf


def test_concurrent_pushes_of_overlapping_closures_upload_shared_objects_once(start_daemon, tmp_path, request):
    daemon = start_daemon()
    root_a, root_b, leaf = _shared_leaf_closures(tmp_path / "build")
    request.addfinalizer(lambda: delete(root_a, root_b, leaf))
    token = _token_file(tmp_path, daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}

    def start(root: str) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            "-c",
            "from niks3d.client.main import main; raise SystemExit(main())",
            "push",
            root,
            "--server",
            daemon.url,
            "--token-file",
            token,
            "--json",
            "--no-progress",
        ]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    with start(root_a) as first:
        assert first.stderr is not None
        opened = first.stderr.readline()  # "opened session ...": A has claimed the leaf
        with start(root_b) as second:
            out_b, err_b = second.communicate(timeout=300)
        out_a, err_a = first.communicate(timeout=300)
    assert first.returncode == 0, opened + err_a
    assert second.returncode == 0, err_b
    docs = [json.loads(out_a), json.loads(out_b)]
    leaf_uploads = [kind for doc in docs for u in doc["uploaded"] if u["path"] == leaf for kind in u["objects"]]
    assert sorted(leaf_uploads) == ["log", "nar"]  # each object of the shared path went up once (no listing: rule 8)
    assert set(docs[0]["published"]) | set(docs[1]["published"]) | set(docs[1]["cached"]) == {root_a, root_b, leaf}
    assert asyncio.run(_sessions(daemon.dsn)) == ["completed", "completed"]


def test_an_interrupted_multipart_upload_resumes(start_daemon, fresh_paths, tmp_path, capsys):
    daemon = start_daemon()
    big = fresh_paths("resume-big", "mkdir $out; head -c 209715200 /dev/urandom > $out/blob")
    token = _token_file(tmp_path, daemon)
    argv = [
        sys.executable,
        "-m",
        "niks3d.client",
        "push",
        big,
        "--server",
        daemon.url,
        "--token-file",
        token,
        "--no-progress",
        "--part-memory",
        "10",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as first:
        assert first.stderr is not None
        opened = first.stderr.readline()
        time.sleep(0.5)  # a few parts are up, far from all 40
        first.send_signal(signal.SIGINT)
        rest = first.stderr.read()
        assert first.wait(60) == 130, opened + rest
    assert "uploaded" not in rest  # it was interrupted in the middle of the multipart upload
    code, doc, err = _push(daemon, tmp_path, capsys, big)
    assert code == 0, err
    assert doc["published"] == [big]

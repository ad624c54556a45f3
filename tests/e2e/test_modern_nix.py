"""The cache with a modern Nix (Debian 13's 2.26 in the ``modern_nix`` chroot; ``NIKS3_MODERN_NIX_SUITE=sid`` for
the newest): ``niks3 push`` on Debian 13's Python from a store that Nix built, then substitution from the bucket and
through the read proxy (public, and private with a netrc), ``nix log``, ``nix store verify`` (and its failure on
an impostor key), and a content-addressed derivation substituted through its realisations.

Every ``nix`` here runs with a fresh store (a second :class:`ModernNix` per reader), no substituter but the one
named, and ``--max-jobs 0`` where it must substitute: a build that was not substituted fails.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from niks3d.errors import ServiceError
from niks3d.nix.buildtrace import parse_build_trace_entry
from niks3d.nix.signing import SecretKey
from testkit.modernnix import ModernNix
from testkit.nixfixtures import CA_MK
from tests.server.bucketview import bucket_keys, get_object

pytestmark = [pytest.mark.modern_nix, pytest.mark.postgres, pytest.mark.s3]

# A build with a log and a dependency (input-addressed), salted so every test gets fresh paths.
IA_EXPR = """\
{ salt }:
let
  dep = derivation {
    name = "modern-dep";
    inherit salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo dependency $salt > $out" ];
  };
in derivation {
  name = "modern-top";
  inherit salt;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo modern log line 1; echo modern log line 2 >&2; echo ${dep} $salt > $out" ];
}
"""

# a function of its salt (nix path-info -f takes it with --argstr), with testkit's content-addressed ``mk``
CA_EXPR = (
    "{ salt }:\nlet\n"
    + CA_MK
    + """\
  dep = mk "modern-cadep" "echo ca dependency $salt > $out";
in mk "modern-catop" "echo ${dep} $salt > $out"
"""
)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _build(nix: ModernNix, expr: str, salt: str, *options: str) -> str:
    out = nix.nix("build", "--no-link", "--print-out-paths", "-f", expr, "--argstr", "salt", salt, *options)
    return out.strip()


def _push(nix: ModernNix, daemon: Any, tmp_path: Path, *paths: str) -> dict[str, Any]:
    token = tmp_path / "push-token"
    token.write_text(daemon.tokens["pusher"] + "\n")
    token.chmod(0o600)
    out = nix.niks3("push", "--json", "--no-progress", "--server", daemon.url, "--token-file", str(token), *paths)
    doc: dict[str, Any] = json.loads(out)
    return doc


def _keys(daemon: Any) -> str:
    return " ".join(k.public_key().to_text() for k in daemon.signing_keys)


def _impostor(daemon: Any) -> str:
    return SecretKey.generate(daemon.signing_keys[0].name).public_key().to_text()


def _reader(tmp_path: Path, modern_nix: ModernNix) -> ModernNix:
    """A second Nix in the same chroot with a fresh, empty store."""
    return ModernNix(modern_nix.root, tmp_path / f"reader-{secrets.token_hex(4)}", shared=[tmp_path])


def _substitute(reader: ModernNix, expr: str, salt: str, url: str, keys: str, *extra: str) -> str:
    """``nix build`` that may only substitute (``--max-jobs 0``) from ``url``."""
    options = ["--max-jobs", "0", "--option", "substituters", url, "--option", "trusted-public-keys", keys, *extra]
    return _build(reader, expr, salt, *options)


def test_push_from_a_modern_store_then_substitute_log_and_verify_from_the_bucket(start_daemon, modern_nix, tmp_path):
    daemon = start_daemon()
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ia.nix", IA_EXPR)
    out = _build(modern_nix, expr, salt)
    (dep,) = [p for p in modern_nix.nix("path-info", "-r", out).split() if p != out]

    doc = _push(modern_nix, daemon, tmp_path, out)  # the client on Debian 13's Python, against the chroot's store
    assert set(doc["published"]) == {out, dep}
    bucket = f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}"

    reader = _reader(tmp_path, modern_nix)
    assert _substitute(reader, expr, salt, bucket, _keys(daemon)) == out
    assert reader.host_path(out).read_bytes() == modern_nix.host_path(out).read_bytes()
    with pytest.raises(ServiceError, match="not signed by any of the keys"):
        _substitute(_reader(tmp_path, modern_nix), expr, salt, bucket, _impostor(daemon))

    log = reader.nix("log", "--store", bucket, out)
    assert log == modern_nix.nix("log", out)
    assert "modern log line 1" in log and "modern log line 2" in log

    verify = ["store", "verify", "--store", bucket, "-r", out, "--option", "trusted-public-keys"]
    reader.nix(*verify, _keys(daemon))
    untrusted = reader.run(["nix", *verify, _impostor(daemon)], check=False)
    assert untrusted.returncode != 0 and f"path '{out}' is untrusted" in untrusted.stderr.decode()


@pytest.mark.parametrize("read_proxy", ["public", "private"])
def test_substitution_through_the_read_proxy(start_daemon, modern_nix, tmp_path, read_proxy):
    daemon = start_daemon(server={"read_proxy": read_proxy})
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ia.nix", IA_EXPR)
    out = _build(modern_nix, expr, salt)
    _push(modern_nix, daemon, tmp_path, out)
    host = re.sub(r"^http://([^:/]+).*$", r"\1", daemon.url)
    netrc = _write(tmp_path, "netrc", f"machine {host}\npassword {daemon.tokens['reader']}\n")
    Path(netrc).chmod(0o600)

    if read_proxy == "private":
        with pytest.raises(ServiceError):
            _substitute(_reader(tmp_path, modern_nix), expr, salt, daemon.url, _keys(daemon))
    reader = _reader(tmp_path, modern_nix)
    assert _substitute(reader, expr, salt, daemon.url, _keys(daemon), "--option", "netrc-file", netrc) == out
    log = reader.nix("log", "--store", daemon.url, "--option", "netrc-file", netrc, out)
    assert "modern log line 2" in log
    reader.nix("store", "verify", "--store", daemon.url, "--option", "netrc-file", netrc, "-r", out,
               "--option", "trusted-public-keys", _keys(daemon))  # fmt: skip


def _deriver(nix: ModernNix, out: str) -> str:
    return nix.run(["nix-store", "--query", "--deriver", out]).stdout.decode().strip()


def _check_build_traces(daemon: Any, nix: ModernNix, published: list[str], *extra: str) -> None:
    """Nix 2.35's layout beside the old one: one ``build-trace-v2/<deriver>/out.doi`` per published output, under
    the derivation the local Nix built it with (for the top, the resolved one), and the ``extra`` keys; each byte
    for byte the body our parser reads back, signed over Nix's fingerprint by the daemon's key. No Nix here reads
    this layout (2.35 needed)."""
    traces = sorted(k for k in bucket_keys(daemon.s3) if k.startswith("build-trace-v2/"))
    expected = {f"build-trace-v2/{_deriver(nix, out).removeprefix('/nix/store/')}/out.doi" for out in published}
    assert traces == sorted(expected | set(extra)), (traces, expected, extra)
    public = [k.public_key() for k in daemon.signing_keys]
    for key in traces:
        body, _ = get_object(daemon.s3, key)
        drv, output = key.removeprefix("build-trace-v2/").removesuffix(".doi").split("/")
        entry = parse_build_trace_entry(body, drv_path=drv, output_name=output)
        assert entry.to_json().encode() == body
        assert f"/nix/store/{entry.out_path}" in published
        assert len(entry.signatures) == len(public)
        assert all(any(k.verify(sig, entry.fingerprint()) for k in public) for sig in entry.signatures), key
        fingerprint = {"key": {"drvPath": drv, "outputName": "out"}, "value": {"outPath": entry.out_path}}
        assert entry.fingerprint() == json.dumps(fingerprint, separators=(",", ":"), sort_keys=True).encode()


def test_the_build_trace_of_a_nix_2_35_store_is_pushed(start_daemon, modern_nix, tmp_path):
    """A store as Nix 2.35 keeps it: no realisations in ``Realisations`` (a table older Nix versions left), its
    entries in ``BuildTraceV3`` (drv basename, output, full output path; docs/protocol.md 4.4). Made from the
    chroot's store, as no 2.35 is available."""
    daemon = start_daemon()
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ca.nix", CA_EXPR)
    out = _build(modern_nix, expr, salt)
    closure = modern_nix.nix("path-info", "-r", out).split()
    evaluated = modern_nix.nix("path-info", "--derivation", "-f", expr, "--argstr", "salt", salt).strip()
    rows = [(_deriver(modern_nix, p).removeprefix("/nix/store/"), "out", p) for p in closure]
    rows.append((evaluated.removeprefix("/nix/store/"), "out", out))  # the evaluated drv too, not only the resolved
    db = sqlite3.connect(modern_nix.state / "var/nix/db/db.sqlite")
    with db:
        # Emptied, not dropped: the chroot's Nix (which niks3 push runs) needs the tables.
        db.execute("DELETE FROM RealisationsRefs")
        db.execute("DELETE FROM Realisations")
        db.execute(
            "CREATE TABLE BuildTraceV3 (id integer primary key autoincrement not null, drvPath text not null, "
            "outputName text not null, outputPath text not null, signatures text)"
        )
        db.executemany("INSERT INTO BuildTraceV3 (drvPath, outputName, outputPath) VALUES (?, ?, ?)", rows)
    db.close()

    doc = _push(modern_nix, daemon, tmp_path, out)
    assert sorted(doc["published"]) == sorted(closure)
    assert not [k for k in bucket_keys(daemon.s3) if k.startswith("realisations/")]
    _check_build_traces(daemon, modern_nix, doc["published"], f"build-trace-v2/{rows[-1][0]}/out.doi")


@pytest.mark.parametrize("via", ["bucket", "proxy"])
def test_a_content_addressed_derivation_is_substituted_through_its_realisations(
    start_daemon, modern_nix, tmp_path, via
):
    daemon = start_daemon()
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ca.nix", CA_EXPR)
    out = _build(modern_nix, expr, salt)
    doc = _push(modern_nix, daemon, tmp_path, out)
    assert len(doc["published"]) == 2
    keys = [k for k in bucket_keys(daemon.s3) if k.startswith("realisations/")]
    # One per output of each derivation, and one more for the top's resolved derivation (its CA input replaced
    # by the dependency's output), which Nix registers too.
    assert len(keys) >= 2 and all(re.fullmatch(r"realisations/sha256:[0-9a-f]{64}!out\.doi", k) for k in keys)
    published = {p.removeprefix("/nix/store/") for p in doc["published"]}
    assert {json.loads(get_object(daemon.s3, k)[0])["outPath"] for k in keys} == published

    _check_build_traces(daemon, modern_nix, doc["published"])

    url = f"{daemon.s3.endpoint_url}/{daemon.s3.bucket}" if via == "bucket" else daemon.url
    reader = _reader(tmp_path, modern_nix)
    # With --max-jobs 0 the CA derivation can only be realised from the cache's realisations.
    assert _substitute(reader, expr, salt, url, _keys(daemon)) == out
    assert reader.host_path(out).read_bytes() == modern_nix.host_path(out).read_bytes()
    if via == "bucket":
        # Deleting the closure takes both layouts of its realisations with it.
        request = urllib.request.Request(
            f"{daemon.url}/api/v1/paths/{out.removeprefix('/nix/store/')}?closure=1&force=1",
            method="DELETE",
            headers={"Authorization": f"Bearer {daemon.tokens['admin']}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200
        left = [k for k in bucket_keys(daemon.s3) if k.startswith(("realisations/", "build-trace-v2/"))]
        assert left == [], left

"""The landing page: its snippets carry the real URL and keys, it shows live figures, it escapes what it
echoes, and it reads as plain text (no entities in the snippets) for curl users."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from niks3d.config import Settings
from niks3d.db.figures import CacheFigures, GcRunSummary
from niks3d.server.landing import FIGURES_HIDDEN, render_landing, sign_in_methods
from tests.server.landing_parse import parse
from tests.server.proxykit import fetch, push_closure


async def test_the_snippets_hold_the_real_url_and_keys(
    make_daemon_config: Any, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(make_daemon_config(n_keys=2))
    keys = [k.public_key().to_text() for k in daemon.signing_keys]
    paths = await push_closure(daemon, tmp_path, seed=61, n=3)
    reply = fetch(daemon.url, "/")
    assert reply.status == 200 and reply.header("Content-Type") == "text/html; charset=utf-8"
    page = reply.body.decode()
    s = parse(page)
    assert s.pre["Cache URL"] == [daemon.url]
    assert s.pre["Public keys"] == keys
    note = "# used together with cache.nixos.org: keep it among the substituters (extra-substituters does)"
    assert s.pre["nix.conf"] == [
        note,
        f"extra-substituters = {daemon.url}",
        f"extra-trusted-public-keys = {' '.join(keys)}",
    ]
    assert s.pre["NixOS"] == [
        "nix.settings = {",
        f"  {note}",
        f'  extra-substituters = [ "{daemon.url}" ];',
        "  extra-trusted-public-keys = [",
        f'    "{keys[0]}"',
        f'    "{keys[1]}"',
        "  ];",
        "};",
    ]
    assert "Credentials" not in s.pre  # a public cache needs none
    assert s.pre["Pushing with stock Nix"] == [
        f"nix copy --to '{daemon.url}/?compression=zstd' ./result",
        f"nix copy --to '{daemon.url}/roots/release-1?compression=zstd' ./result",
    ]
    assert s.pre["Upstream caches"] == ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
    # Plain text for curl: the snippets appear in the raw HTML exactly as they are to be pasted.
    for line in s.pre["nix.conf"] + s.pre["NixOS"]:
        assert line in page
    assert s.cells["store paths"] == str(len(paths))
    assert s.cells["upload sessions open"] == "0"
    assert s.cells["last garbage collection"] == "none yet"


async def test_a_private_cache_shows_the_netrc_lines_and_its_figures_only_to_readers(start_daemon: Any) -> None:
    daemon = start_daemon(server={"read_proxy": "private", "public_url": "https://cache.example.org"})
    anonymous = fetch(daemon.url, "/")
    assert anonymous.status == 200  # what Nix needs to be configured is public
    s = parse(anonymous.body.decode())
    assert s.pre["Cache URL"] == ["https://cache.example.org"]
    assert s.pre["Credentials"] == ["machine cache.example.org", "password <your token>"]
    assert '  netrc-file = "/etc/nix/netrc";' in s.pre["NixOS"]
    assert s.pre["nix.conf"][-1] == "netrc-file = /etc/nix/netrc"
    assert not s.cells and FIGURES_HIDDEN in anonymous.body.decode()
    for refused in ({"Authorization": "Bearer not-a-token"}, daemon.headers("pusher")):
        assert not parse(fetch(daemon.url, "/", headers=refused).body.decode()).cells
    basic = base64.b64encode(f"nix:{daemon.tokens['reader']}".encode()).decode()
    for reader in (daemon.headers("reader"), {"Authorization": f"Basic {basic}"}):
        cells = parse(fetch(daemon.url, "/", headers=reader).body.decode()).cells
        assert cells["store paths"] == "0"


def test_what_the_page_echoes_is_escaped() -> None:
    figures = CacheFigures(
        taken_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        paths=3,
        objects={("nar", "present"): (3, 3 << 30), ("narinfo", "present"): (3, 900)},
        last_gc=GcRunSummary(1, "finished", datetime(2026, 1, 1, tzinfo=UTC), None, 2048, False),
    )
    page = render_landing(
        url='http://evil"><script>alert(1)</script>',
        public_keys=["k:<b>"],
        private=True,
        direct=False,
        figures=figures,
    )
    assert "<script>" not in page and "<b>" not in page
    s = parse(page)
    assert s.pre["Cache URL"] == ['http://evil"><script>alert(1)</script>']
    assert s.cells["stored in the bucket"] == f"3.0 GiB ({(3 << 30) + 900} bytes)"
    assert s.cells["last garbage collection"].startswith("finished 2026-01-01 00:00:00")
    assert "2.0 KiB" in s.cells["last garbage collection"]
    unavailable = render_landing(url="http://c", public_keys=["k:x"], private=False, direct=True, figures=None)
    assert "database did not answer" in unavailable and "Nix reads the bucket directly" in unavailable


def test_the_snippets_say_which_upstream_caches_to_keep_and_trust() -> None:
    ours, other = "cache-1:" + "A" * 43 + "=", "corp-upstream-1:" + "B" * 43 + "="
    alone = parse(render_landing(url="http://c", public_keys=[ours], private=False, direct=False, figures=None))
    assert "Upstream caches" not in alone.pre and not any(line.startswith("#") for line in alone.pre["nix.conf"])
    page = render_landing(
        url="http://c", public_keys=[ours], private=False, direct=False, figures=None, upstream_keys=[other]
    )
    s = parse(page)
    assert s.pre["Upstream caches"] == [other]
    assert (
        s.pre["nix.conf"][0] == "# used together with the caches of corp-upstream-1: keep them among the substituters"
    )
    # a key Nix does not trust by default must be trusted for the closure to be substitutable
    assert s.pre["nix.conf"][-1] == f"extra-trusted-public-keys = {ours} {other}"
    assert f'    "{other}"' in s.pre["NixOS"]


def test_the_page_names_the_enabled_sign_in_methods_and_how_nix_presents_a_certificate() -> None:
    base = {"s3": {"bucket": "b"}, "signing": {"key_files": ["k"]}}
    tokens = [{"name": "ci", "file": "t", "scopes": ["push"]}]
    plain = Settings.model_validate({**base, "tokens": tokens})
    assert sign_in_methods(plain) == ["API tokens: 1 configured (Authorization: Bearer, or the netrc password)"]
    tls = {
        "certificate_file": "c",
        "key_file": "k",
        "client_ca_file": "ca",
        "client_certificates": "required",
        "clients": [{"uri": "spiffe://x/*", "scopes": ["read"]}],
    }
    with_certs = Settings.model_validate({**base, "tls": tls})
    methods = sign_in_methods(with_certs)
    assert methods[1] == "client certificates (required): 1 rule(s) map subjects and subjectAltNames to scopes"
    page = render_landing(
        url="https://c",
        public_keys=["k:x"],
        private=True,
        direct=False,
        figures=None,
        sign_in=methods,
        client_certificates=True,
    )
    s = parse(page)
    assert "<li>client certificates (required): 1 rule(s)" in page
    assert s.pre["Signing in"][0] == (
        "extra-substituters = https://c?tls-certificate=/etc/nix/cache.crt&tls-private-key=/etc/nix/cache.key"
    )
    without = render_landing(url="https://c", public_keys=["k:x"], private=True, direct=False, figures=None)
    assert "Signing in" not in without

"""HTTPS and client certificates end to end (docs/auth.md, "Client certificates"): the real daemon terminates TLS
with certificates made here, ``niks3 push`` presents a client certificate, curl reads the private proxy with one,
and every certificate that must not get in is refused: none, another CA's, an expired one (the handshake fails),
one from the right CA outside the rules (403), and a common name crafted to look like the rule's organisation.
SIGHUP reloads the files without closing the listener, between RELOADING=1 and READY=1.

The VM scenario with the same steps: nix/tests/mtls.nix.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from niks3d.client.main import main
from niks3d.errors import ServiceError
from niks3d.nix.storepath import StorePath
from tests.server.bucketview import bucket_keys
from tests.server.certkit import CA

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

RULES = [
    {"subject": "CN=ci-*,O=Acme", "scopes": ["push", "read"]},
    {"uri": "spiffe://acme.example/reader/*", "scopes": ["read"]},
]


@dataclass
class Pki:
    dir: Path
    ca: CA
    ca_file: Path
    other_ca: CA

    def client(self, name: str, cn: str, *, ca: CA | None = None, **kwargs: Any) -> tuple[Path, Path]:
        return (ca or self.ca).issue(cn, **kwargs).write(self.dir, name)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    ca = CA("niks3d test CA")
    return Pki(directory, ca, ca.write(directory / "ca.crt"), CA("another CA"))


def _tls_daemon(make_daemon_config: Any, pki: Pki, **tls: Any) -> Any:
    cert, key = pki.ca.server_cert().write(pki.dir, "server")
    section = {"certificate_file": str(cert), "key_file": str(key), "client_ca_file": str(pki.ca_file)}
    daemon = make_daemon_config(server={"read_proxy": "private"}, tls={**section, "clients": RULES, **tls})
    daemon.url = daemon.url.replace("http://", "https://")
    daemon.ssl_context = ssl.create_default_context(cafile=pki.ca_file)
    return daemon


def _curl(url: str, *, ca: Path, cert: tuple[Path, Path] | None = None) -> tuple[int, str, str]:
    """curl's exit code, the HTTP status it got (``000`` for none) and the body or error."""
    argv = ["curl", "-sS", "--max-time", "30", "--cacert", str(ca), "-w", "\n%{http_code}", url]
    if cert is not None:
        argv += ["--cert", str(cert[0]), "--key", str(cert[1])]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    body, _, status = done.stdout.rpartition("\n")
    return done.returncode, status, body + done.stderr


def _push(daemon: Any, capsys: Any, cert: tuple[Path, Path], ca: Path, *paths: str) -> tuple[int, str, str]:
    args = ["push", "--json", "--no-progress", "--server", daemon.url, "--ca-file", str(ca)]
    code = main([*args, "--client-cert", str(cert[0]), "--client-key", str(cert[1]), *paths])
    out, err = capsys.readouterr()
    return code, out, err


async def _session_owners(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["token_name"] for r in await conn.fetch("SELECT token_name FROM upload_sessions")]
    finally:
        await conn.close()


@pytest.mark.nix
def test_a_client_certificate_pushes_and_reads_and_every_other_certificate_is_refused(
    make_daemon_config, start_daemon, pki, nix_fixtures, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))  # no token or TLS file by default
    daemon = start_daemon(_tls_daemon(make_daemon_config, pki))
    pusher = pki.client("pusher", "ci-builder", org="Acme")
    reader = pki.client("reader", "reader", uris=("spiffe://acme.example/reader/laptop",))
    outsider = pki.client("outsider", "intern", org="Acme")
    crafted = pki.client("crafted", "ci-x,O=Acme")  # RFC 4514 renders it CN=ci-x\,O=Acme: one common name
    expired = pki.client("expired", "ci-old", org="Acme", expired=True)
    foreign = pki.client("foreign", "ci-builder", org="Acme", ca=pki.other_ca)

    # refused before anything is written: the 403 names the subject and the rules
    code, _, err = _push(daemon, capsys, outsider, pki.ca_file, nix_fixtures.prototest)
    assert code == 1 and "'CN=intern,O=Acme' matches no [[tls.clients]] rule" in err, err
    code, _, err = _push(daemon, capsys, crafted, pki.ca_file, nix_fixtures.prototest)
    assert code == 1 and "CN=ci-x\\\\,O=Acme" in err and "matches no" in err, err
    for refused in (foreign, expired):
        code, _, err = _push(daemon, capsys, refused, pki.ca_file, nix_fixtures.prototest)
        assert code == 1 and "failed after 2 tries" in err and "is the certificate signed by" in err, err
    assert not any(k.endswith(".narinfo") for k in bucket_keys(daemon.s3))
    assert asyncio.run(_session_owners(daemon.dsn)) == []

    code, out, err = _push(daemon, capsys, pusher, pki.ca_file, nix_fixtures.prototest)
    assert code == 0, err
    assert nix_fixtures.prototest in json.loads(out)["published"]
    assert asyncio.run(_session_owners(daemon.dsn)) == ["cert:CN=ci-builder,O=Acme"]
    narinfo = f"{daemon.url}/{StorePath.parse(nix_fixtures.prototest).hash}.narinfo"

    code, status, body = _curl(narinfo, ca=pki.ca_file, cert=reader)  # matched by its URI subjectAltName
    assert (code, status) == (0, "200") and f"StorePath: {nix_fixtures.prototest}" in body, body
    code, status, body = _curl(narinfo, ca=pki.ca_file)
    assert status == "401" and "a token (or a client certificate) with the read scope" in body, body
    code, status, body = _curl(narinfo, ca=pki.ca_file, cert=outsider)
    assert status == "403" and "matches no [[tls.clients]] rule" in body, body
    for refused in (foreign, expired):  # the handshake fails: no HTTP answer at all
        code, status, body = _curl(narinfo, ca=pki.ca_file, cert=refused)
        assert code != 0 and status == "000", body
    code, status, body = _curl(narinfo, ca=pki.other_ca.write(pki.dir / "other-ca.crt"), cert=reader)
    assert code == 60 and status == "000", body  # curl does not trust a server its CA did not sign

    plain = subprocess.run(["curl", "-sS", "--max-time", "10", daemon.url.replace("https:", "http:") + "/health"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert plain.returncode != 0, plain.stdout  # the TCP listener speaks TLS only
    # a token still works over the same HTTPS listener: the Authorization header wins over the certificate
    code, status, _ = _curl(f"{daemon.url}/api/v1/pins", ca=pki.ca_file, cert=reader)
    assert status == "200", status
    # Nix 2.8 reads the private HTTPS cache with a token, once it trusts the CA (it cannot present a certificate)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\npassword {daemon.tokens['reader']}\n")
    netrc.chmod(0o600)
    refused, store = _nix_2_8_copy(daemon, tmp_path, netrc, pki.dir / "other-ca.crt", nix_fixtures.prototest)
    assert refused.returncode != 0 and not (store / nix_fixtures.prototest.lstrip("/")).exists()
    copied, store = _nix_2_8_copy(daemon, tmp_path, netrc, pki.ca_file, nix_fixtures.prototest)
    assert copied.returncode == 0, copied.stderr
    assert (store / nix_fixtures.prototest.lstrip("/")).exists()
    log = daemon.log()
    assert "Traceback" not in log and "BEGIN" not in log


def _nix_2_8_copy(
    daemon: Any, tmp_path: Path, netrc: Path, ca: Path, path: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``nix copy`` (the host's Nix 2.8) of ``path`` from the daemon into a fresh store, trusting ``ca``."""
    store = tmp_path / f"store-{time.monotonic_ns()}"
    argv = ["nix", "--extra-experimental-features", "nix-command", "copy", "--from", daemon.url, "--to", str(store)]
    options = {"substituters": "", "trusted-public-keys": _keys(daemon), "netrc-file": str(netrc)}
    options["download-attempts"] = "1"
    for name, value in options.items():
        argv += ["--option", name, value]
    # Nix 2.8 takes its CA bundle from $NIX_SSL_CERT_FILE (or $SSL_CERT_FILE) only: it ignores the ssl-cert-file
    # setting, which `nix -vvvvv` shows as "verify TLS: Nix CA file = ..." (docs/auth.md).
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(store) + "-cache"}
    env["NIX_SSL_CERT_FILE"] = str(ca)
    done = subprocess.run([*argv, path], capture_output=True, text=True, env=env, timeout=300, check=False)
    return done, store


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock, path


def _messages_until(sock: socket.socket, wanted: str) -> list[str]:
    seen = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.split("\n"):
            return seen


def _server_issuer(port: int, ca: Path, cert: tuple[Path, Path]) -> str:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(*cert)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        issuer = dict(part[0] for part in s.getpeercert()["issuer"])
    return issuer["commonName"]


def test_sighup_reloads_the_tls_files_without_closing_the_listener(make_daemon_config, start_daemon, pki, tmp_path):
    daemon = _tls_daemon(make_daemon_config, pki, client_certificates="required")
    notify, notify_path = _notify_socket(tmp_path)
    daemon.extra_env["NOTIFY_SOCKET"] = notify_path
    pusher = pki.client("pusher", "ci-builder", org="Acme")
    daemon.ssl_context.load_cert_chain(*pusher)  # a certificate is required, for /ready too
    start_daemon(daemon)
    _messages_until(notify, "READY=1")
    port = int(daemon.url.rsplit(":", 1)[1])
    tls = daemon.settings["tls"]

    code, status, _ = _curl(f"{daemon.url}/ready", ca=pki.ca_file)  # "required": no certificate, no handshake
    assert code != 0 and status == "000"
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=daemon.ssl_context)
    kept.request("GET", "/health")
    assert kept.getresponse().read() and _server_issuer(port, pki.ca_file, pusher) == "niks3d test CA"

    # a broken reload: the daemon says why and keeps serving with the files it has
    Path(tls["key_file"]).write_text("not a key\n")
    daemon.process.send_signal(signal.SIGHUP)
    messages = _messages_until(notify, "READY=1")
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in messages), messages
    assert _server_issuer(port, pki.ca_file, pusher) == "niks3d test CA"
    deadline = time.monotonic() + 10
    while "tls.key_file" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"tls.key_file: {tls['key_file']} holds no PEM private key" in daemon.log()

    # a new server certificate and a new client CA: new connections get both, the open one goes on
    new_ca = pki.other_ca
    new_ca.server_cert().write(Path(tls["certificate_file"]).parent, "server")
    new_ca.write(Path(tls["client_ca_file"]))
    new_client = pki.client("new-client", "ci-builder", org="Acme", ca=new_ca)
    new_ca_file = new_ca.write(pki.dir / "new-ca.crt")
    daemon.process.send_signal(signal.SIGHUP)
    _messages_until(notify, "READY=1")
    assert _server_issuer(port, new_ca_file, new_client) == "another CA"
    code, status, _ = _curl(f"{daemon.url}/health", ca=new_ca_file, cert=pusher)  # the old CA's client: refused
    assert code != 0 and status == "000"
    code, status, _ = _curl(f"{daemon.url}/health", ca=new_ca_file, cert=new_client)
    assert (code, status) == (0, "200")
    kept.request("GET", "/health")
    assert kept.getresponse().status == 200  # the connection opened before the reloads still works
    kept.close()
    assert daemon.process.poll() is None and "Traceback" not in daemon.log()
    notify.close()


def _https_reader_setup(make_daemon_config: Any, start_daemon: Any, pki: Pki, tmp_path: Path) -> tuple[Any, Path]:
    """A private HTTPS cache whose certificates are optional, and the netrc with the reader token for it."""
    daemon = start_daemon(_tls_daemon(make_daemon_config, pki))
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\npassword {daemon.tokens['reader']}\n")
    netrc.chmod(0o600)
    return daemon, netrc


def _keys(daemon: Any) -> str:
    return " ".join(k.public_key().to_text() for k in daemon.signing_keys)


@pytest.mark.modern_nix
def test_modern_nix_reads_the_private_https_cache_and_2_34_presents_a_client_certificate(
    make_daemon_config, start_daemon, pki, modern_nix, tmp_path, capsys
):
    from tests.e2e.test_modern_nix import IA_EXPR, _build, _reader, _substitute, _write

    daemon, netrc = _https_reader_setup(make_daemon_config, start_daemon, pki, tmp_path)
    salt = secrets.token_hex(6)
    expr = _write(tmp_path, "ia.nix", IA_EXPR)
    out = _build(modern_nix, expr, salt)
    pusher = pki.client("pusher", "ci-builder", org="Acme")
    # the client on the chroot's Python, presenting its certificate
    modern_nix.niks3(
        "push", "--no-progress", "--server", daemon.url, "--ca-file", str(pki.ca_file),
        "--client-cert", str(pusher[0]), "--client-key", str(pusher[1]), out,
    )  # fmt: skip
    trust = ("--option", "ssl-cert-file", str(pki.ca_file))
    assert _substitute(_reader(tmp_path, modern_nix), expr, salt, daemon.url, _keys(daemon), *trust,
                       "--option", "netrc-file", str(netrc)) == out  # fmt: skip

    reader = pki.client("reader", "reader", uris=("spiffe://acme.example/reader/nix",))
    with_cert = f"{daemon.url}?tls-certificate={reader[0]}&tls-private-key={reader[1]}"
    if modern_nix.version < (2, 34):
        return  # before 2.34 Nix cannot present a client certificate: it reads with a token (above) only
    assert _substitute(_reader(tmp_path, modern_nix), expr, salt, with_cert, _keys(daemon), *trust) == out
    outsider = pki.client("outsider", "intern", org="Acme")
    refused = f"{daemon.url}?tls-certificate={outsider[0]}&tls-private-key={outsider[1]}"
    with pytest.raises(ServiceError):
        _substitute(_reader(tmp_path, modern_nix), expr, salt, refused, _keys(daemon), *trust)

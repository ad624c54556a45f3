"""The ``[tls]`` section: each bad file named by ``load_config`` (what ``niks3d check-config`` prints), the rules'
validation, RFC 4514 names, which certificates the rules match, and a reload that fails keeping the old files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from niks3d.config import TlsClientRule, TlsSettings, load_config
from niks3d.errors import ConfigError
from niks3d.server.clientcerts import CertificateRules, PeerCertificate
from niks3d.tls import ServerTls, TlsFiles, parse_name, peer_subject, rfc4514
from tests.server.certkit import CA
from tests.test_config import KNOWN_KEY, minimal, secret, write_config


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("tls test CA")


def _files(tmp_path: Path, ca: CA) -> dict[str, str]:
    cert, key = ca.server_cert().write(tmp_path, "server")
    return {"certificate_file": str(cert), "key_file": str(key), "client_ca_file": str(ca.write(tmp_path / "ca.crt"))}


def _problems(tmp_path: Path, tls: dict[str, object]) -> dict[str, str]:
    secret(tmp_path, "sk", KNOWN_KEY)
    path = write_config(tmp_path, minimal(tls=tls))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    return {p.key: p.reason for p in excinfo.value.problems}


def test_good_files_load_and_relative_names_resolve_like_secrets(tmp_path, ca):
    secret(tmp_path, "sk", KNOWN_KEY)
    files = _files(tmp_path, ca)
    tls = {k: Path(v).name for k, v in files.items()} | {"client_certificates": "required"}
    config = load_config(write_config(tmp_path, minimal(tls=tls)), environ={})
    assert config.secrets.tls == TlsFiles(
        Path(files["certificate_file"]), Path(files["key_file"]), Path(files["client_ca_file"]), True
    )
    assert load_config(write_config(tmp_path, minimal()), environ={}).secrets.tls is None


def test_each_bad_file_is_named_with_what_is_wrong(tmp_path, ca):
    files = _files(tmp_path, ca)
    other_key = ca.issue("x").key_pem
    (tmp_path / "other.key").write_bytes(other_key)
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "encrypted.key").write_bytes(encrypted)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    leaf, _ = ca.issue("leaf").write(tmp_path, "leaf")

    cases = [
        ({"certificate_file": str(tmp_path / "missing.crt")}, "tls.certificate_file", "cannot read"),
        ({"certificate_file": files["key_file"]}, "tls.certificate_file", "holds no PEM certificate"),
        ({"certificate_file": str(tmp_path / "garbage.pem")}, "tls.certificate_file", "is not a valid PEM certificate"),
        ({"key_file": str(tmp_path / "other.key")}, "tls.key_file", "is not the private key of the certificate"),
        ({"key_file": str(tmp_path / "encrypted.key")}, "tls.key_file", "is encrypted"),
        ({"key_file": files["certificate_file"]}, "tls.key_file", "holds no PEM private key"),
        ({"client_ca_file": str(leaf)}, "tls.client_ca_file", "holds no CA certificate"),
        ({"client_ca_file": str(tmp_path)}, "tls.client_ca_file", "is a directory"),
    ]
    for change, key, reason in cases:
        problems = _problems(tmp_path, {**files, **change})
        assert list(problems) == [key] and reason in problems[key], (change, problems)
        bad = next(iter(change.values()))
        assert bad in problems[key], problems  # the file is named


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"scopes": ["read"]}, "sets none"),
        ({"subject": "CN=a", "dns": "a", "scopes": ["read"]}, "sets subject, dns"),
        ({"subject": "just-a-name", "scopes": ["read"]}, "is not TYPE=value"),
        ({"subject": "CN=a\\", "scopes": ["read"]}, "lone backslash"),
        ({"uri": "spiffe://x/*", "scopes": []}, "at least 1 item"),
        ({"email": "*@x", "scopes": ["write"]}, "'read'"),
    ],
)
def test_bad_rules_are_refused(rule, reason):
    with pytest.raises(ValueError, match=reason):
        TlsClientRule.model_validate(rule)


def test_rules_and_required_certificates_need_a_client_ca():
    base = {"certificate_file": "c", "key_file": "k"}
    for extra in ({"clients": [{"dns": "*", "scopes": ["read"]}]}, {"client_certificates": "required"}):
        with pytest.raises(ValueError, match="need client_ca_file"):
            TlsSettings.model_validate({**base, **extra})


def test_rfc4514_names_escape_values_and_parse_back():
    subject = ((("countryName", "DE"),), (("organizationName", "Acme, Inc."),), (("commonName", "#ci +1 "),))
    attributes = peer_subject(subject)
    assert attributes == (("CN", "#ci +1 "), ("O", "Acme, Inc."), ("C", "DE"))
    text = rfc4514(attributes)
    assert text == "CN=\\#ci \\+1\\ ,O=Acme\\, Inc.,C=DE"
    assert parse_name(text) == attributes
    assert parse_name("cn=a\\2Cb+OU=x") == (("CN", "a,b"), ("OU", "x"))
    with_newline = peer_subject(((("commonName", "ci-1\nINFO forged"),),))
    assert rfc4514(with_newline) == "CN=ci-1\\0AINFO forged"
    assert parse_name(rfc4514(with_newline)) == with_newline


def _peer(cn: str, org: str | None = None, **alt: tuple[str, ...]) -> PeerCertificate:
    subject = ([(("organizationName", org),)] if org else []) + [(("commonName", cn),)]
    kinds = {"dns": "DNS", "uri": "URI", "email": "email", "ip": "IP Address"}
    sans = tuple((kinds[kind], value) for kind, values in alt.items() for value in values)
    return PeerCertificate.from_peercert({"subject": tuple(subject), "subjectAltName": sans})


def test_rules_match_field_by_field_and_add_up_their_scopes():
    rules = CertificateRules(
        TlsClientRule.model_validate(r)
        for r in [
            {"subject": "CN=ci-*,O=Acme", "scopes": ["push"]},
            {"uri": "spiffe://acme/ci/*", "scopes": ["read"], "trusted": True},
            {"dns": "*.readers.acme", "scopes": ["read"]},
            {"email": "ops@acme", "scopes": ["gc"]},
        ]
    )
    both = rules.match(_peer("ci-1", "Acme", uri=("spiffe://acme/ci/1",)))
    assert (both.name, both.scopes, both.trusted) == ("cert:CN=ci-1,O=Acme", frozenset({"push", "read"}), True)
    by_dns = rules.match(_peer("laptop", dns=("other.example", "me.readers.acme")))
    assert (by_dns.name, by_dns.scopes) == ("cert:me.readers.acme", frozenset({"read"}))
    assert rules.match(_peer("x", email=("ops@acme",))).scopes == {"gc"}
    assert rules.match(_peer("x", dns=("a\nb.readers.acme",))).name == "cert:a\\nb.readers.acme"
    # No match: a wrong organisation, an extra attribute, case, a crafted common name, another kind of name.
    for peer in (
        _peer("ci-1", "Evil"),
        _peer("ci-1"),
        _peer("CI-1", "Acme"),
        _peer("ci-x,O=Acme"),
        _peer("ci-1", "Acme, Evil"),
        _peer("x", dns=("spiffe://acme/ci/1",)),
        _peer("x", ip=("10.0.0.1",)),
        _peer("x", email=("ops@acme.evil",)),
    ):
        found = rules.match(peer)
        assert found.scopes == frozenset(), peer
        assert found.name == f"cert:{peer.subject}"


def test_a_reload_that_fails_keeps_the_previous_context(tmp_path, ca):
    files = _files(tmp_path, ca)
    tls = ServerTls(
        TlsFiles(Path(files["certificate_file"]), Path(files["key_file"]), Path(files["client_ca_file"]), False),
        source="niks3d.toml",
    )
    assert tls.context.verify_mode == ssl.CERT_OPTIONAL
    assert tls.context.options & ssl.OP_NO_RENEGOTIATION
    Path(files["key_file"]).write_text("broken")
    with pytest.raises(ConfigError, match=r"niks3d.toml: tls.key_file: .* holds no PEM private key"):
        tls.reload()
    assert tls.reloads == 0 and tls._current is tls.context
    ca.server_cert().write(tmp_path, "server")
    tls.reload()
    assert tls.reloads == 1 and tls._current is not tls.context
    assert tls._current.verify_mode == ssl.CERT_OPTIONAL

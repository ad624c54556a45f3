"""``nix/render.nix``, the module's renderer: secrets become systemd credentials that the TOML names by id, listen
addresses become ``ListenStream=`` values, and unset (null) options leave no key behind (TOML has no null)."""

from __future__ import annotations

import json
import typing

import pytest

from niks3d.config import Scope
from tests.nix_module.nixeval import nix_eval, render

pytestmark = pytest.mark.nix

EXAMPLE = "(import ./nix/example.nix).services.niks3"


def test_each_secret_becomes_a_credential_and_the_toml_names_only_its_id() -> None:
    example = nix_eval(EXAMPLE)
    rendered = render()
    settings = rendered["settings"]
    paths = {c["id"]: c["path"] for c in rendered["credentials"]}
    assert rendered["loadCredential"] == [f"{c['id']}:{c['path']}" for c in rendered["credentials"]]
    assert [paths[name] for name in settings["signing"]["key_files"]] == example["signingKeyFiles"]
    assert {t["name"]: paths[t["file"]] for t in settings["tokens"]} == {
        name: token["file"] for name, token in example["tokens"].items()
    }
    assert paths[settings["s3"]["access_key_id_file"]] == example["s3"]["accessKeyIdFile"]
    assert paths[settings["s3"]["secret_access_key_file"]] == example["s3"]["secretAccessKeyFile"]
    toml_text = json.dumps(settings)
    for path in paths.values():
        assert path not in toml_text, f"the secret path {path} reached the TOML"


def test_tokens_keep_their_scopes_in_name_order() -> None:
    rendered = render(
        '{ settings.s3.bucket = "b"; tokens = { zed = { file = "/k/z"; scopes = [ "gc" ]; };'
        ' alpha = { file = "/k/a"; scopes = [ "push" "read" ]; }; }; }'
    )
    assert rendered["settings"]["tokens"] == [
        {"name": "alpha", "file": "token-alpha", "scopes": ["push", "read"]},
        {"name": "zed", "file": "token-zed", "scopes": ["gc"]},
    ]
    assert rendered["loadCredential"] == ["token-alpha:/k/a", "token-zed:/k/z"]


def test_several_signing_keys_are_numbered_in_order() -> None:
    rendered = render('{ settings.s3.bucket = "b"; signingKeyFiles = [ "/k/new" "/k/old" ]; }')
    assert rendered["settings"]["signing"]["key_files"] == ["signing-key-1", "signing-key-2"]
    assert rendered["loadCredential"] == ["signing-key-1:/k/new", "signing-key-2:/k/old"]


def test_a_database_password_file_becomes_a_credential() -> None:
    rendered = render('{ settings.database.url = "postgresql://niks3@db/niks3"; database.passwordFile = "/k/db"; }')
    assert rendered["settings"]["database"] == {
        "url": "postgresql://niks3@db/niks3",
        "password_file": "database-password",
    }
    assert rendered["loadCredential"] == ["database-password:/k/db"]


def test_listen_addresses_become_listen_streams_and_tcp_ports() -> None:
    rendered = render(
        '{ settings.server.listen = [ "[::1]:5751" "127.0.0.1:8080" "0.0.0.0:8080" "unix:/run/niks3/niks3.sock" ]; }'
    )
    assert rendered["listenStreams"] == ["[::1]:5751", "127.0.0.1:8080", "0.0.0.0:8080", "/run/niks3/niks3.sock"]
    assert rendered["tcpPorts"] == [5751, 8080, 8080]
    assert rendered["settings"]["server"]["listen"][-1] == "unix:/run/niks3/niks3.sock"


def test_without_a_listen_option_the_daemon_default_is_the_socket() -> None:
    assert render("{ }")["listenStreams"] == ["127.0.0.1:5751"]


def test_null_options_leave_no_key_behind() -> None:
    rendered = render(
        '{ settings = { server.public_url = null; s3 = { bucket = "b"; endpoint_url = null; }; };'
        " s3 = { accessKeyIdFile = null; secretAccessKeyFile = null; }; database.passwordFile = null; }"
    )
    settings = rendered["settings"]
    assert settings["server"] == {}
    assert settings["s3"] == {"bucket": "b"}
    assert "password_file" not in settings["database"]
    assert settings["tokens"] == []
    assert rendered["credentials"] == []


@pytest.mark.parametrize("listen", ["unix:/run/a.sock", "[::]:443"])
def test_each_kind_of_address_keeps_its_form_in_the_toml(listen: str) -> None:
    rendered = render(f'{{ settings.server.listen = [ "{listen}" ]; }}')
    assert rendered["settings"]["server"]["listen"] == [listen]


def test_the_module_offers_exactly_the_scopes_the_daemon_knows() -> None:
    assert nix_eval("import ./nix/scopes.nix") == list(typing.get_args(Scope))


def test_the_tls_files_become_credentials_and_the_rules_stay_in_settings() -> None:
    rendered = render(
        '{ settings.s3.bucket = "b"; tls = { certificateFile = "/k/server.crt"; keyFile = "/k/server.key";'
        ' clientCaFile = "/k/ca.crt"; }; settings.tls.clients = [ { uri = "spiffe://x/*"; scopes = [ "push" ]; } ]; }'
    )
    assert rendered["settings"]["tls"] == {
        "certificate_file": "tls-certificate",
        "key_file": "tls-key",
        "client_ca_file": "tls-client-ca",
        "clients": [{"uri": "spiffe://x/*", "scopes": ["push"]}],
    }
    assert rendered["loadCredential"] == [
        "tls-certificate:/k/server.crt",
        "tls-key:/k/server.key",
        "tls-client-ca:/k/ca.crt",
    ]
    assert "tls" not in render('{ settings.s3.bucket = "b"; }')["settings"]


def test_oidc_issuers_become_oidc_tables_that_check_config_accepts(tmp_path, capsys) -> None:
    import tomli_w

    from niks3d.cli.main import main

    rendered = render(
        '{ settings.s3.bucket = "b"; signingKeyFiles = [ "/k/signing" ]; oidc.github = {'
        ' issuer = "https://token.actions.githubusercontent.com"; audience = "https://cache.example.org";'
        ' nameClaim = "repository";'
        ' rules = [ { claims = { repository_owner = "acme"; ref = "refs/heads/main"; }; scopes = [ "push" ]; } ]; };'
        ' oidc.gitlab = { issuer = "https://gitlab.example.org"; audience = "https://cache.example.org";'
        ' caFile = "/etc/ssl/gitlab-ca.pem";'
        ' rules = [ { claims = { ref_protected = "true"; }; scopes = [ "push" "read" ]; } ]; }; }'
    )
    assert rendered["settings"]["oidc"] == [
        {
            "name": "github",
            "issuer": "https://token.actions.githubusercontent.com",
            "audience": "https://cache.example.org",
            "name_claim": "repository",
            "rules": [{"claims": {"repository_owner": "acme", "ref": "refs/heads/main"}, "scopes": ["push"]}],
        },
        {
            "name": "gitlab",
            "issuer": "https://gitlab.example.org",
            "audience": "https://cache.example.org",
            "name_claim": "sub",
            "ca_file": "/etc/ssl/gitlab-ca.pem",
            "rules": [{"claims": {"ref_protected": "true"}, "scopes": ["push", "read"]}],
        },
    ]
    assert [c["id"] for c in rendered["credentials"]] == ["signing-key-1"]  # the OIDC entries hold no secret
    config = tmp_path / "niks3d.toml"
    config.write_text(tomli_w.dumps(rendered["settings"]))
    assert main(["check-config", "--no-secrets", str(config)]) == 0, capsys.readouterr()
    assert "oidc" not in render('{ settings.s3.bucket = "b"; }')["settings"]

"""The documented example of services.niks3 (``nix/example.nix``), rendered to TOML the way the module renders it
(``nix/render.nix``), is a configuration ``niks3d check-config`` accepts: structurally, as the module's build-time
check runs it, and with its secrets laid out the way systemd's ``LoadCredential=`` lays them out.
``docs/nixos.md`` shows the same example verbatim."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from niks3d.cli.main import main
from niks3d.nix.signing import SecretKey
from tests.nix_module.nixeval import ROOT, nix_eval, render

pytestmark = pytest.mark.nix

EXAMPLE = "(import ./nix/example.nix).services.niks3"


def _write_toml(settings: dict[str, Any], path: Path) -> Path:
    with open(path, "wb") as handle:
        tomli_w.dump(settings, handle)
    return path


def _credential_content(credential_id: str) -> str:
    """A valid secret for each kind of credential the module loads."""
    if credential_id.startswith("signing-key-"):
        return SecretKey.generate(f"cache.example.org-{credential_id.rsplit('-', 1)[1]}").to_text() + "\n"
    if credential_id.startswith("token-"):
        return secrets.token_hex(32) + "\n"
    return f"{credential_id}-value\n"


def test_the_documented_example_passes_check_config_without_secrets(tmp_path: Path, capsys: Any) -> None:
    example = nix_eval(EXAMPLE)
    config = _write_toml(render()["settings"], tmp_path / "niks3d.toml")
    assert main(["check-config", "--no-secrets", str(config)]) == 0
    out = capsys.readouterr().out
    settings = example["settings"]
    assert f"listen: {', '.join(settings['server']['listen'])}" in out
    assert f"read proxy: {settings['server']['read_proxy']}" in out
    assert f"bucket: {settings['s3']['bucket']} at {settings['s3']['endpoint_url']}" in out
    for name, token in example["tokens"].items():
        assert f"  {name}: {', '.join(token['scopes'])}" in out


def test_the_example_with_its_credentials_passes_check_config(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    rendered = render()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for credential in rendered["credentials"]:
        path = credentials / credential["id"]
        path.write_text(_credential_content(credential["id"]))
        path.chmod(0o400)
    config = _write_toml(rendered["settings"], tmp_path / "niks3d.toml")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    key = SecretKey.parse((credentials / "signing-key-1").read_text())
    assert f"  {key.public_key().to_text()}" in out
    assert "static keys from files" in out


def test_without_the_credentials_the_example_is_refused_naming_each_file(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    rendered = render()
    empty = tmp_path / "credentials"
    empty.mkdir()
    config = _write_toml(rendered["settings"], tmp_path / "niks3d.toml")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(empty))
    assert main(["check-config", str(config)]) == 1
    out = capsys.readouterr().out
    for credential in rendered["credentials"]:
        assert str(empty / credential["id"]) in out


def test_a_rendering_without_signing_keys_is_refused(tmp_path: Path, capsys: Any) -> None:
    rendered = render(f"{EXAMPLE} // {{ signingKeyFiles = [ ]; }}")
    config = _write_toml(rendered["settings"], tmp_path / "niks3d.toml")
    assert main(["check-config", "--no-secrets", str(config)]) == 1
    assert "signing.key_files" in capsys.readouterr().out


def test_the_docs_show_the_example_verbatim() -> None:
    example = (ROOT / "nix" / "example.nix").read_text()
    docs = (ROOT / "docs" / "nixos.md").read_text()
    assert f"```nix\n{example}```\n" in docs, "docs/nixos.md must show nix/example.nix verbatim in a ```nix block"

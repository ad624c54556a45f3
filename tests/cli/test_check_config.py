"""``niks3d check-config`` and the ``niks3d`` entry point: FILE: KEY: REASON lines, summaries, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w

from niks3d.cli.main import main
from niks3d.errors import ConfigError, ConfigProblem
from niks3d.nix.signing import SecretKey
from tests.server.certkit import CA

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "niks3d.toml"
NIKS3D = Path(sys.executable).with_name("niks3d")
KNOWN_KEY = "test-cache-1:PqggjRI4Ue4L9QFtQg+/rYIn5t2c/6jiUk2Q/I+mAHbhNpTF4pJOuaJN1Mck2jYg1kt/Z3hJlFyljAuoyAmKUg=="
KNOWN_PUBLIC = "test-cache-1:4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI="
TOKEN = "push-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NIKS3_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def run_niks3d(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_") and k != "CREDENTIALS_DIRECTORY"}
    base.pop("JOURNAL_STREAM", None)
    return subprocess.run(
        [str(NIKS3D), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def secret(directory: Path, name: str, text: str, mode: int = 0o600) -> None:
    (directory / name).write_text(text)
    (directory / name).chmod(mode)


def write_config(directory: Path, data: dict[str, object]) -> Path:
    path = directory / "niks3d.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "sk-new", SecretKey.generate("test-cache-2").to_text())
    secret(tmp_path, "token", TOKEN + "\n")
    secret(tmp_path, "s3-id", "AKIAEXAMPLEID")
    secret(tmp_path, "s3-secret", "s3-secret-value-xyz")
    secret(tmp_path, "db", "database-password-xyz")
    data = {
        "server": {"listen": ["127.0.0.1:5751", "[::1]:5751"]},
        "database": {"password_file": "db"},
        "s3": {
            "bucket": "nix-cache",
            "endpoint_url": "http://127.0.0.1:8333",
            "access_key_id_file": "s3-id",
            "secret_access_key_file": "s3-secret",
        },
        "signing": {"key_files": ["sk", "sk-new"]},
        "tokens": [{"name": "ci", "file": "token", "scopes": ["push", "pin"]}],
    }
    return write_config(tmp_path, data)


def test_valid_config_prints_a_summary_without_secrets(valid: Path) -> None:
    result = run_niks3d("check-config", str(valid))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"{valid}: OK"
    assert "listen: 127.0.0.1:5751, [::1]:5751" in out
    assert "bucket: nix-cache at http://127.0.0.1:8333" in out
    assert "signing keys: 2" in out and KNOWN_PUBLIC in out
    assert "  ci: push, pin" in out
    public_second = SecretKey.parse((valid.parent / "sk-new").read_text()).public_key().to_text()
    assert public_second in out
    for value in (
        TOKEN,
        KNOWN_KEY.split(":")[1],
        "AKIAEXAMPLEID",
        "s3-secret-value-xyz",
        "database-password-xyz",
    ):
        assert value not in out and value not in result.stderr
    assert result.stderr == ""


def test_the_tls_section_is_summarised_and_a_bad_tls_file_is_named(valid: Path) -> None:
    assert "tls: off (plain HTTP)" in run_niks3d("check-config", str(valid)).stdout
    ca = CA("check-config CA")
    cert, key = ca.server_cert().write(valid.parent, "server")
    ca.write(valid.parent / "ca.crt")
    data = tomllib.loads(valid.read_text())
    rules = [{"subject": "CN=builder-*,O=Example", "scopes": ["push", "read"]}]
    data["tls"] = {"certificate_file": cert.name, "key_file": key.name, "client_ca_file": "ca.crt", "clients": rules}
    path = write_config(valid.parent, data)
    result = run_niks3d("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tls: HTTPS on the TCP listeners, certificate server.crt" in result.stdout
    assert "  client certificates: optional, signed by ca.crt" in result.stdout
    assert "    subject CN=builder-*,O=Example: push, read" in result.stdout
    assert key.read_text().splitlines()[1] not in result.stdout
    key.write_text(ca.issue("other").key_pem.decode())
    result = run_niks3d("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}: tls.key_file: {key} is not the private key of the certificate in")


def test_an_oidc_ca_file_is_loaded_and_a_bad_one_is_named(valid: Path) -> None:
    ca_pem = valid.parent / "issuer-ca.pem"
    CA("issuer CA").write(ca_pem)
    data = tomllib.loads(valid.read_text())
    rules = [{"claims": {"repository": "acme/*"}, "scopes": ["push"]}]
    issuer = {"name": "ci", "issuer": "https://ci.example", "audience": "https://cache.example", "rules": rules}
    data["oidc"] = [{**issuer, "name": "gh", "issuer": "https://gh.example"}, {**issuer, "ca_file": ca_pem.name}]
    path = write_config(valid.parent, data)
    result = run_niks3d("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oidc issuers: 2" in result.stdout
    assert "  gh: https://gh.example (system CAs), 1 rule(s)" in result.stdout
    assert "  ci: https://ci.example (CA issuer-ca.pem), 1 rule(s)" in result.stdout
    where = f"{path}: oidc[1].ca_file: "
    for content, reason in (
        (None, f"cannot read {ca_pem}: No such file or directory"),
        (b"not a certificate\n", f"{ca_pem} holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", f"{ca_pem} is not a valid PEM"),
    ):
        ca_pem.unlink(missing_ok=True)
        if content is not None:
            ca_pem.write_bytes(content)
        result = run_niks3d("check-config", str(path))
        assert result.returncode == 1, result.stdout
        [line] = result.stdout.splitlines()
        assert line.startswith(where + reason), line
        # Not a secret, but a file of the host: --no-secrets (the NixOS module's build-time check) skips it.
        assert run_niks3d("check-config", "--no-secrets", str(path)).returncode == 0


def test_four_problems_print_four_lines_and_exit_1(tmp_path: Path) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "bad-sk", "test-cache-9:" + "A" * 40)
    data = {
        "server": {"listen": ["[::1]5751"]},
        "s3": {"bucket": "nix-cache", "colour": "blue"},
        "signing": {"key_files": ["sk", "missing-sk", "bad-sk"]},
    }
    path = write_config(tmp_path, data)
    result = run_niks3d("check-config", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    assert lines[0].startswith(f"{path}: server.listen[0]: '[::1]5751'")
    assert lines[1] == f"{path}: s3.colour: unknown key"
    assert lines[2].startswith(f"{path}: signing.key_files[1]: cannot read {tmp_path / 'missing-sk'}")
    assert lines[3].startswith(f"{path}: signing.key_files[2]: secret key")
    assert "4 problems" in result.stderr
    assert "A" * 40 not in result.stdout + result.stderr


def test_environment_problems_name_the_variable(valid: Path) -> None:
    result = run_niks3d("check-config", str(valid), env={"NIKS3_GC__OLDER_THAN": "forever"})
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("environment variable NIKS3_GC__OLDER_THAN: gc.older_than: 'forever' is not a duration")


def test_environment_overrides_are_listed(valid: Path) -> None:
    result = run_niks3d("check-config", str(valid), env={"NIKS3_GC__OLDER_THAN": "7d"})
    assert result.returncode == 0, result.stdout
    assert "environment overrides: NIKS3_GC__OLDER_THAN" in result.stdout
    assert "keep pushed roots 1w" in result.stdout


def test_toml_syntax_error_is_one_line_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "niks3d.toml"
    path.write_text('[s3]\nbucket = "b"\n[signing\nkey_files = ["sk"]\n')
    result = run_niks3d("check-config", str(path))
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{path}: not valid TOML: ") and "line 3" in line


def test_group_readable_secret_warns_on_stderr(valid: Path) -> None:
    (valid.parent / "token").chmod(0o644)
    result = run_niks3d("check-config", str(valid))
    assert result.returncode == 0
    assert "tokens[0].file" in result.stderr and "readable by group or others" in result.stderr
    assert "readable by group" not in result.stdout and TOKEN not in result.stderr


def test_credentials_directory_supplies_relative_secrets(valid: Path, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("sk", "sk-new", "token", "s3-id", "s3-secret", "db"):
        (valid.parent / name).rename(credentials / name)
    assert run_niks3d("check-config", str(valid)).returncode == 1
    result = run_niks3d("check-config", str(valid), env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.returncode == 0, result.stdout
    assert KNOWN_PUBLIC in result.stdout


def test_no_secrets_checks_structure_without_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "s3": {"bucket": "b", "access_key_id_file": "absent-id", "secret_access_key_file": "absent-key"},
        "signing": {"key_files": ["absent-sk"]},
        "tokens": [{"name": "ci", "file": "absent-token", "scopes": ["push"]}],
    }
    path = write_config(tmp_path, data)
    assert main(["check-config", str(path)]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["check-config", str(path), "--no-secrets"]) == 0
    out = capsys.readouterr().out
    assert "structure only" in out and "absent-sk" in out and "  ci: push" in out


def test_no_secrets_still_reports_structural_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {"s3": {"bucket": "b"}, "signing": {"key_files": []}})
    assert main(["check-config", "--no-secrets", str(path)]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{path}: signing.key_files: ")


def test_example_config_passes_structure_check() -> None:
    result = run_niks3d("check-config", "--no-secrets", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "listen: 127.0.0.1:5751" in result.stdout and "bucket: nix-cache" in result.stdout


def test_check_config_file_defaults_to_niks3_config(valid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIKS3_CONFIG", str(valid))
    assert main(["check-config"]) == 0


# --- the entry point ------------------------------------------------------------------------------------


@pytest.fixture
def fake_gc(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """Stands in for niks3d.cli.gc (written elsewhere); records the arguments main() passes."""
    calls: list[argparse.Namespace] = []
    module = types.ModuleType("niks3d.cli.gc")

    def gc_command(args: argparse.Namespace) -> int:
        calls.append(args)
        if args.config.name == "interrupt.toml":
            raise KeyboardInterrupt
        if args.config.name == "broken.toml":
            raise ConfigError([ConfigProblem("broken.toml", "gc.older_than", "bad"), ConfigProblem("x", "", "y")])
        return 7

    module.gc_command = gc_command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "niks3d.cli.gc", module)
    return calls


def test_subcommand_gets_parsed_arguments(fake_gc: list[argparse.Namespace], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIKS3_CONFIG", "/srv/niks3d.toml")
    assert main(["--log-level", "debug", "gc", "--older-than", "7d", "--grace-period", "90m", "--dry-run"]) == 7
    [args] = fake_gc
    assert args.config == Path("/srv/niks3d.toml") and args.log_level == "debug"
    assert args.older_than == timedelta(days=7) and args.grace_period == timedelta(minutes=90)
    assert (args.force, args.dry_run, args.json) == (False, True, False)


def test_niks3_error_becomes_error_lines_and_exit_1(
    fake_gc: list[argparse.Namespace], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gc", "-c", "broken.toml"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["niks3d: error: broken.toml: gc.older_than: bad", "niks3d: error: x: y"]


def test_interrupt_exits_130(fake_gc: list[argparse.Namespace]) -> None:
    assert main(["gc", "--config", "interrupt.toml"]) == 130


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--older-than", "soon"]) == 2
    assert "'soon' is not a duration" in capsys.readouterr().err
    assert main(["dev", "--port", "99999"]) == 2
    assert main([]) == 2
    assert main(["frobnicate"]) == 2


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "niks3d 0.1.0"
    assert main(["check-config", "--help"]) == 0
    assert "--no-secrets" in capsys.readouterr().out


def test_missing_command_module_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "niks3d.cli.dev", None)  # import of the module fails as if absent
    assert main(["dev", "--keep"]) == 1
    assert "niks3d: error:" in capsys.readouterr().err

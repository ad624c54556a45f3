"""load_config: the one path from a TOML file, NIKS3_* overrides and secret files to a validated Config."""

from __future__ import annotations

import logging
import os
import typing
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from pydantic import BaseModel

from niks3d.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ServerSettings,
    Settings,
    default_config_path,
    load_config,
    parse_duration,
)
from niks3d.errors import ConfigError, ConfigProblem
from niks3d.nix.signing import SecretKey
from tests.server.certkit import CA

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "niks3d.toml"
# docs/protocol.md 3.3's throwaway test vector.
KNOWN_KEY = "test-cache-1:PqggjRI4Ue4L9QFtQg+/rYIn5t2c/6jiUk2Q/I+mAHbhNpTF4pJOuaJN1Mck2jYg1kt/Z3hJlFyljAuoyAmKUg=="
KNOWN_PUBLIC = "test-cache-1:4TaUxeKSTrmiTdTHJNo2INZLf2d4SZRcpYwLqMgJilI="
CI_TOKEN = "ci-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-fedcba9876543210"


def secret(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def write_config(directory: Path, data: dict[str, object], name: str = "niks3d.toml") -> Path:
    path = directory / name
    path.write_text(tomli_w.dumps(data))
    return path


def minimal(**sections: object) -> dict[str, object]:
    data: dict[str, object] = {"s3": {"bucket": "cache"}, "signing": {"key_files": ["sk"]}}
    data.update(sections)
    return data


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[ConfigProblem]:
    return excinfo.value.problems


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A configuration that sets every key, with every secret file present."""
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "sk2", SecretKey.generate("test-cache-2").to_text() + "\n")
    secret(tmp_path, "s3-id", "AKIAEXAMPLE\n")
    secret(tmp_path, "s3-secret", "s3cr3t/with+chars\n")
    secret(tmp_path, "db-password", "a password with spaces\n")
    secret(tmp_path, "token-ci", CI_TOKEN + "\n")
    secret(tmp_path, "token-admin", ADMIN_TOKEN)
    data = {
        "server": {
            "listen": ["127.0.0.1:5751", "[::1]:5751", "unix:/run/niks3d/http.sock"],
            "public_url": "https://cache.example.org/",
            "read_proxy": "private",
            "proxy_prefix": "/cache/",
            "nar_mode": "redirect",
            "narinfo_cache_bytes": 0,
            "metrics": "private",
            "max_body_bytes": 1024,
            "drain_seconds": 2.5,
        },
        "database": {
            "url": "postgresql://niks3@db.example.org/niks3",
            "password_file": "db-password",
            "pool_min_size": 2,
            "pool_max_size": 4,
            "connect_timeout": 3.0,
        },
        "s3": {
            "bucket": "nix-cache",
            "endpoint_url": "http://127.0.0.1:8333/",
            "public_endpoint_url": "https://s3.example.org",
            "region": "eu-west-1",
            "addressing_style": "path",
            "access_key_id_file": "s3-id",
            "secret_access_key_file": "s3-secret",
            "presign_expiry": "2h",
            "multipart_threshold": 16 * 1024 * 1024,
            "multipart_part_size": 8 * 1024 * 1024,
            "verify": "full",
            "max_attempts": 3,
        },
        "signing": {"key_files": ["sk", "sk2"]},
        "tokens": [
            {"name": "ci", "file": "token-ci", "scopes": ["push", "read"]},
            {"name": "admin", "file": "token-admin", "scopes": ["admin"]},
        ],
        "cache": {"priority": 30, "want_mass_query": False, "store_dir": "/nix/store"},
        "gc": {"older_than": "14d", "grace_period": "30m", "session_expiry": 7200, "batch_size": 500},
        "logging": {"level": "debug", "format": "json"},
    }
    return write_config(tmp_path, data)


def test_full_config_loads_every_key_and_secret(full: Path) -> None:
    config = load_config(full, environ={})
    s = config.settings
    assert config.source == full and config.overrides == ()
    assert s.server.listen == ["127.0.0.1:5751", "[::1]:5751", "unix:/run/niks3d/http.sock"]
    assert s.server.public_url == "https://cache.example.org"
    assert (s.server.read_proxy, s.server.max_body_bytes, s.server.drain_seconds) == ("private", 1024, 2.5)
    assert (s.server.proxy_prefix, s.server.nar_mode, s.server.narinfo_cache_bytes, s.server.metrics) == (
        "/cache",
        "redirect",
        0,
        "private",
    )
    assert s.database.url == "postgresql://niks3@db.example.org/niks3"
    assert (s.database.pool_min_size, s.database.pool_max_size, s.database.connect_timeout) == (2, 4, 3.0)
    assert s.s3.bucket == "nix-cache" and s.s3.endpoint_url == "http://127.0.0.1:8333"
    assert s.s3.public_endpoint_url == "https://s3.example.org"
    assert (s.s3.region, s.s3.addressing_style, s.s3.verify, s.s3.max_attempts) == (
        "eu-west-1",
        "path",
        "full",
        3,
    )
    assert s.s3.presign_expiry == timedelta(hours=2)
    assert (s.s3.multipart_threshold, s.s3.multipart_part_size) == (16 << 20, 8 << 20)
    assert (s.cache.priority, s.cache.want_mass_query) == (30, False)
    assert s.gc.older_than == timedelta(days=14) and s.gc.grace_period == timedelta(minutes=30)
    assert s.gc.session_expiry == timedelta(hours=2) and s.gc.batch_size == 500
    assert (s.logging.level, s.logging.format) == ("debug", "json")

    secrets = config.secrets
    assert secrets.signing_keys[0].public_key().to_text() == KNOWN_PUBLIC
    assert [key.name for key in secrets.signing_keys] == ["test-cache-1", "test-cache-2"]
    assert [(t.name, t.secret, t.scopes) for t in secrets.tokens] == [
        ("ci", CI_TOKEN.encode(), frozenset({"push", "read"})),
        ("admin", ADMIN_TOKEN.encode(), frozenset({"admin"})),
    ]
    assert secrets.s3_access_key_id == "AKIAEXAMPLE"
    assert secrets.s3_secret_access_key == "s3cr3t/with+chars"
    assert secrets.database_password == "a password with spaces"


def test_secret_values_stay_out_of_reprs(full: Path) -> None:
    config = load_config(full, environ={})
    text = repr(config)
    for value in (
        CI_TOKEN,
        ADMIN_TOKEN,
        "s3cr3t/with+chars",
        "a password with spaces",
        KNOWN_KEY.split(":")[1],
    ):
        assert value not in text


def test_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    s = load_config(path, environ={}, open_secrets=False).settings
    assert s.server.listen == ["127.0.0.1:5751"] and s.server.read_proxy == "public"
    assert s.database.url == "postgresql:///niks3?host=/run/postgresql" and s.database.password_file is None
    assert s.s3.endpoint_url is None and s.s3.region == "us-east-1" and s.s3.verify == "size"
    assert s.tokens == [] and s.cache.priority == 40 and s.cache.want_mass_query is True
    assert s.gc.older_than == timedelta(days=30) and s.gc.grace_period == timedelta(hours=1)
    assert s.logging.level == "info"


def test_environment_overrides_single_nested_keys(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal(gc={"older_than": "30d", "grace_period": "2h"}))
    environ = {
        "NIKS3_S3__BUCKET": "other-bucket",
        "NIKS3_SERVER__LISTEN": '["[::1]:5751", "127.0.0.1:8080"]',
        "NIKS3_GC__OLDER_THAN": "7d",
        "NIKS3_CACHE__PRIORITY": "30",
        "NIKS3_CACHE__WANT_MASS_QUERY": "false",
        "NIKS3_S3__ENDPOINT_URL": "http://minio:9000",
    }
    config = load_config(path, environ=environ, open_secrets=False)
    s = config.settings
    assert s.s3.bucket == "other-bucket"
    assert s.server.listen == ["[::1]:5751", "127.0.0.1:8080"]
    assert s.gc.older_than == timedelta(days=7)
    assert s.gc.grace_period == timedelta(hours=2)  # the file's sibling key survives the override
    assert (s.cache.priority, s.cache.want_mass_query) == (30, False)
    assert s.s3.endpoint_url == "http://minio:9000"
    assert set(config.overrides) == set(environ)


def test_single_key_variables_win_over_table_variables(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal(s3={"bucket": "b", "region": "eu-west-1", "max_attempts": 2}))
    environ = {"NIKS3_S3": '{"bucket": "from-table", "region": "from-table"}', "niks3_s3__region": "from-key"}
    s3 = load_config(path, environ=environ, open_secrets=False).settings.s3
    assert (s3.bucket, s3.region, s3.max_attempts) == ("from-table", "from-key", 2)


def test_environment_null_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal(s3={"bucket": "b", "endpoint_url": "http://x:1"}))
    config = load_config(path, environ={"NIKS3_S3__ENDPOINT_URL": "null"}, open_secrets=False)
    assert config.settings.s3.endpoint_url is None


def test_variables_that_are_not_settings_are_ignored(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    environ = {
        "NIKS3_CONFIG": "/nonexistent.toml",
        "NIKS3_EVENT_LOOP": "asyncio",
        "NIKS3_REQUIRE_SERVICES": "1",
        "NIKS3_TOKEN_FILE": "/run/secrets/token",
        "NIKS3_SERVER_URL": "http://cache:5751",
    }
    config = load_config(path, environ=environ, open_secrets=False)
    assert config.overrides == () and config.settings.server.listen == ["127.0.0.1:5751"]


def test_bad_overrides_name_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal())
    environ = {
        "NIKS3_S3__BUCKKET": "typo",
        "NIKS3_SERVR__LISTEN": '["127.0.0.1:1"]',
        "NIKS3_SIGNING__KEY_FILES": "not json",
        "NIKS3_GC__BATCH_SIZE": "0",
    }
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ=environ, open_secrets=False)
    got = {(p.file, p.key): p.reason for p in problems_of(excinfo)}
    assert got.keys() == {
        ("environment variable NIKS3_S3__BUCKKET", "s3.buckket"),
        ("environment variable NIKS3_SERVR__LISTEN", "servr.listen"),
        ("environment variable NIKS3_SIGNING__KEY_FILES", "signing.key_files"),
        ("environment variable NIKS3_GC__BATCH_SIZE", "gc.batch_size"),
    }
    assert got["environment variable NIKS3_S3__BUCKKET", "s3.buckket"] == "unknown key"
    assert "not a configuration key" in got["environment variable NIKS3_SERVR__LISTEN", "servr.listen"]
    assert "JSON" in got["environment variable NIKS3_SIGNING__KEY_FILES", "signing.key_files"]


def test_relative_secret_names_resolve_in_credentials_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_dir = tmp_path / "etc"
    credentials = tmp_path / "credentials"
    config_dir.mkdir()
    credentials.mkdir()
    other = SecretKey.generate("decoy")
    # Decoys next to the config file must not be used when $CREDENTIALS_DIRECTORY is set.
    secret(config_dir, "signing-key", other.to_text())
    secret(config_dir, "token", "decoy-token-0123456789")
    # systemd's credential files may be group-readable inside the credentials directory: no warning.
    secret(credentials, "signing-key", KNOWN_KEY, mode=0o440)
    secret(credentials, "token", CI_TOKEN, mode=0o444)
    data = minimal(signing={"key_files": ["signing-key"]}, tokens=[{"name": "ci", "file": "token", "scopes": ["push"]}])
    path = write_config(config_dir, data)
    with caplog.at_level(logging.WARNING, logger="niks3d"):
        config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.secrets.signing_keys[0].public_key().to_text() == KNOWN_PUBLIC
    assert config.secrets.tokens[0].secret == CI_TOKEN.encode()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_relative_secret_names_resolve_next_to_the_config_file(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    secret(config_dir, "sk", KNOWN_KEY)
    config = load_config(write_config(config_dir, minimal()), environ={})
    assert config.secrets.signing_keys[0].public_key().to_text() == KNOWN_PUBLIC


def test_absolute_secret_paths_are_used_as_is(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    key = secret(elsewhere, "sk", KNOWN_KEY)
    path = write_config(tmp_path, minimal(signing={"key_files": [str(key)]}))
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert config.secrets.signing_keys[0].name == "test-cache-1"


def test_group_readable_secret_is_used_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = secret(tmp_path, "sk", KNOWN_KEY, mode=0o640)
    path = write_config(tmp_path, minimal())
    with caplog.at_level(logging.WARNING, logger="niks3d"):
        config = load_config(path, environ={})
    assert config.secrets.signing_keys
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "signing.key_files[0]" in warnings[0] and str(key) in warnings[0] and "0640" in warnings[0]
    assert KNOWN_KEY.split(":")[1] not in warnings[0]


def test_private_secret_gets_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret(tmp_path, "sk", KNOWN_KEY, mode=0o600)
    with caplog.at_level(logging.WARNING, logger="niks3d"):
        load_config(write_config(tmp_path, minimal()), environ={})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "bad-sk", "test-cache-2:bm90IGEga2V5")
    data = minimal(
        server={"listen": ["localhost"], "colour": "blue"},
        signing={"key_files": ["sk", "missing-sk", "bad-sk"]},
    )
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    problems = problems_of(excinfo)
    assert {p.file for p in problems} == {str(path)}
    assert [p.key for p in problems] == [
        "server.listen[0]",
        "server.colour",
        "signing.key_files[1]",
        "signing.key_files[2]",
    ]
    reasons = [p.reason for p in problems]
    assert "'localhost' is not host:port" in reasons[0]
    assert reasons[1] == "unknown key"
    assert f"cannot read {tmp_path / 'missing-sk'}" in reasons[2] and "No such file" in reasons[2]
    assert "secret key" in reasons[3] and "expected 64" in reasons[3]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[s3]\nbucket = "cache"\nregion = eu-west-1\n\n[signing]\nkey_files = ["sk"]\n', "line 3"),
        ('[s3]\nbucket = "cache"\n\n[signing]\nkey_files = ["sk",\n', "line 5"),
        ('[s3]\nbucket = "cache"\n[s3]\n', "line 3"),
    ],
)
def test_toml_syntax_error_names_the_line(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "niks3d.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    [problem] = problems_of(excinfo)
    assert problem.file == str(path) and problem.key == ""
    assert problem.reason.startswith("not valid TOML: ") and line in problem.reason


def test_unreadable_config_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "absent.toml", environ={})
    [problem] = problems_of(excinfo)
    assert problem.file == str(tmp_path / "absent.toml") and "No such file" in problem.reason


def test_missing_required_sections_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {}), environ={}, open_secrets=False)
    assert {(p.key, p.reason) for p in problems_of(excinfo)} == {
        ("s3", "required, but not set"),
        ("signing", "required, but not set"),
    }


def test_wrong_types_name_the_key(tmp_path: Path) -> None:
    data = minimal(
        server={"listen": "127.0.0.1:5751", "max_body_bytes": -1},
        cache={"priority": "high", "want_mass_query": 3},
        gc={"older_than": "1 year"},
        tokens=[{"name": "bad name", "file": "t", "scopes": ["push", "sudo"]}],
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, data), environ={}, open_secrets=False)
    keys = [p.key for p in problems_of(excinfo)]
    assert keys == [
        "server.listen",
        "server.max_body_bytes",
        "tokens[0].name",
        "tokens[0].scopes[1]",
        "cache.priority",
        "cache.want_mass_query",
        "gc.older_than",
    ]
    assert all(p.reason and "Traceback" not in p.reason for p in problems_of(excinfo))


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("postgresql:///niks3?host=/run/postgresql", True),
        ("postgresql://niks3@localhost:5432/niks3", True),
        ("postgresql://niks3:hunter2@localhost/niks3", False),
        ("postgresql://localhost/niks3?user=x&password=hunter2", False),
        ("mysql://localhost/niks3", False),
    ],
)
def test_database_url_must_not_carry_a_password(tmp_path: Path, url: str, accepted: bool) -> None:
    path = write_config(tmp_path, minimal(database={"url": url}))
    if accepted:
        assert load_config(path, environ={}, open_secrets=False).settings.database.url == url
        return
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={}, open_secrets=False)
    [problem] = problems_of(excinfo)
    assert problem.key == "database.url" and "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("short-token", "at least 16"),
        ("", "empty"),
        ("a token with spaces in it", "whitespace"),
        ("tab\tseparated-token-value", "whitespace"),
        ("ünïcödé-token-0123456789", "printable ASCII"),
    ],
)
def test_bad_token_files_are_refused(tmp_path: Path, token: str, reason: str) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "t", token)
    data = minimal(tokens=[{"name": "ci", "file": "t", "scopes": ["push"]}])
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, data), environ={})
    [problem] = problems_of(excinfo)
    assert problem.key == "tokens[0].file" and reason in problem.reason
    if token:
        assert token not in str(excinfo.value)


def test_tokens_sharing_a_secret_are_refused(tmp_path: Path) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "t1", CI_TOKEN + "\n")
    secret(tmp_path, "t2", CI_TOKEN)
    tokens = [
        {"name": "a", "file": "t1", "scopes": ["push"]},
        {"name": "b", "file": "t2", "scopes": ["admin"]},
    ]
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, minimal(tokens=tokens)), environ={})
    [problem] = problems_of(excinfo)
    assert problem.key == "tokens[1].file" and "same secret as token 'a'" in problem.reason
    assert CI_TOKEN not in str(excinfo.value)


def test_signing_keys_sharing_a_name_are_refused(tmp_path: Path) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "sk2", SecretKey.generate("test-cache-1").to_text())
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, minimal(signing={"key_files": ["sk", "sk2"]})), environ={})
    [problem] = problems_of(excinfo)
    assert problem.key == "signing.key_files[1]" and "test-cache-1" in problem.reason


def test_s3_key_files_come_in_pairs_and_hold_one_line(tmp_path: Path) -> None:
    secret(tmp_path, "sk", KNOWN_KEY)
    secret(tmp_path, "id", "")
    path = write_config(tmp_path, minimal(s3={"bucket": "b", "access_key_id_file": "id"}))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    got = {p.key: p.reason for p in problems_of(excinfo)}
    assert "set both access_key_id_file and secret_access_key_file" in got["s3"]
    assert got["s3.access_key_id_file"] == "the file is empty"


def test_no_secret_value_appears_in_any_problem(tmp_path: Path) -> None:
    values = {
        "sk": KNOWN_KEY[:-6] + "AAAA==",  # right shape, wrong public half
        "sk2": "name:" + KNOWN_KEY.split(":")[1] + "\nsecond line",
        "t1": "tiny-secret",
        "t2": "has some\nnewlines-in-it-secret",
        "id": "AKIA SPACE",
        "key": "two\nlines",
    }
    for name, text in values.items():
        secret(tmp_path, name, text)
    data = minimal(
        signing={"key_files": ["sk", "sk2"]},
        s3={"bucket": "b", "access_key_id_file": "id", "secret_access_key_file": "key"},
        tokens=[
            {"name": "a", "file": "t1", "scopes": ["push"]},
            {"name": "b", "file": "t2", "scopes": ["push"]},
        ],
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, data), environ={})
    assert len(problems_of(excinfo)) == 6
    text = str(excinfo.value)
    for value in values.values():
        for fragment in value.split("\n"):
            if len(fragment) >= 6:
                assert fragment not in text


def test_structure_only_check_opens_no_secret(tmp_path: Path) -> None:
    data = minimal(
        s3={"bucket": "b", "access_key_id_file": "nope-id", "secret_access_key_file": "nope-key"},
        tokens=[{"name": "ci", "file": "/nonexistent/token", "scopes": ["push"]}],
    )
    config = load_config(write_config(tmp_path, data), environ={}, open_secrets=False)
    assert config.secrets.tokens == () and config.secrets.signing_keys == ()
    assert config.secrets.s3_access_key_id is None and config.secrets.database_password is None
    assert config.settings.tokens[0].name == "ci"


def test_example_config_is_valid(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, environ={}, open_secrets=False)
    assert isinstance(config, Config)
    # And with its secret files supplied as systemd credentials, it loads completely.
    secret(tmp_path, "signing-key", KNOWN_KEY)
    secret(tmp_path, "s3-access-key-id", "AKIAEXAMPLE")
    secret(tmp_path, "s3-secret-access-key", "example-secret")
    secret(tmp_path, "token-ci", CI_TOKEN)
    secret(tmp_path, "token-admin", ADMIN_TOKEN)
    ca = CA("example CA")
    server = ca.server_cert()
    secret(tmp_path, "tls-certificate", server.cert_pem.decode())
    secret(tmp_path, "tls-key", server.key_pem.decode())
    secret(tmp_path, "tls-client-ca", ca.cert_pem.decode())
    config = load_config(EXAMPLE, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert [t.name for t in config.secrets.tokens] == ["ci", "admin"]
    assert config.secrets.tls is not None and config.secrets.tls.key == tmp_path / "tls-key"


def _model_of(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (unwrapping ``X | None``), and whether it is a list of them (``[[table]]``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        model, is_list = args[0], True
    elif args and typing.get_origin(annotation) is not None and len(args) == 1:
        model, is_list = args[0], False
    else:
        model, is_list = annotation, False
    return (model if isinstance(model, type) and issubclass(model, BaseModel) else None), is_list


def _assert_shows(text: str, name: str, model: type[BaseModel], is_list: bool) -> None:
    assert (f"\n[[{name}]]\n" if is_list else f"\n[{name}]\n") in text, name
    for field, info in model.model_fields.items():
        nested, nested_list = _model_of(info.annotation)
        if nested is not None:  # [[tls.clients]]
            _assert_shows(text, f"{name}.{field}", nested, nested_list)
        else:
            assert f"\n{field} = " in text or f"\n# {field} = " in text, f"{name}.{field}"


def test_example_config_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    for section_name, info in Settings.model_fields.items():
        model, is_list = _model_of(info.annotation)
        assert model is not None, section_name
        _assert_shows(text, section_name, model, is_list)


@pytest.mark.parametrize(
    ("item", "ok"),
    [
        ("127.0.0.1:5751", True),
        ("0.0.0.0:0", True),
        ("[::1]:5751", True),
        ("[fe80::1%eth0]:80", True),
        ("cache.example.org:443", True),
        ("unix:/run/niks3d.sock", True),
        ("unix:relative.sock", False),
        ("::1:5751", False),
        ("[::1:5751", False),
        ("[nonsense]:5751", False),
        (":5751", False),
        ("127.0.0.1", False),
        ("127.0.0.1:65536", False),
        ("127.0.0.1:http", False),
    ],
)
def test_listen_addresses(item: str, ok: bool) -> None:
    if ok:
        assert ServerSettings(listen=[item]).listen == [item]
    else:
        with pytest.raises(ValueError, match="listen"):
            ServerSettings(listen=[item])


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/", "/"),
        ("/cache", "/cache"),
        ("/cache/", "/cache"),
        ("/nix/cache-1.v2", "/nix/cache-1.v2"),
        ("cache", None),
        ("/a//b", None),
        ("/a/../b", None),
        ("/with space", None),
        ("/api", None),
        ("/api/cache", None),
        ("/metrics", None),
        ("/health/x", None),
    ],
)
def test_proxy_prefixes(prefix: str, expected: str | None) -> None:
    if expected is not None:
        assert ServerSettings(proxy_prefix=prefix).proxy_prefix == expected
    else:
        with pytest.raises(ValueError, match="proxy_prefix"):
            ServerSettings(proxy_prefix=prefix)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("3600", 3600), (7, 7)],
)
def test_durations(value: object, expected: int) -> None:
    assert parse_duration(value) == timedelta(seconds=expected)


@pytest.mark.parametrize("value", ["1y", "-1d", "1.5h", "", True, -3])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_default_config_path() -> None:
    assert default_config_path({}) == DEFAULT_CONFIG_PATH == Path("/etc/niks3d/niks3d.toml")
    assert default_config_path({"NIKS3_CONFIG": "/srv/niks3d.toml"}) == Path("/srv/niks3d.toml")


def test_load_config_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIKS3_S3__BUCKET", "from-os-environ")
    path = write_config(tmp_path, minimal())
    assert load_config(path, open_secrets=False).settings.s3.bucket == "from-os-environ"
    assert os.environ["NIKS3_S3__BUCKET"] == "from-os-environ"


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("server", {"max_body_bytes": 2 * 1024**3}),
        ("server", {"idle_timeout": 0}),
        ("server", {"body_timeout": 10**9}),
        ("server", {"drain_seconds": 1e300}),
        ("database", {"statement_timeout": 1e12}),
        ("database", {"acquire_timeout": 0}),
        ("database", {"pool_max_size": 10**6}),
        ("s3", {"request_timeout": 1e9}),
        ("s3", {"max_attempts": 10**30}),
        ("gc", {"older_than": "99999999999999999999w"}),
        ("gc", {"grace_period": 1e300}),
        ("gc", {"session_expiry": "36501d"}),
    ],
    ids=str,
)
def test_durations_and_sizes_have_upper_bounds(tmp_path: Path, section: str, values: dict[str, object]) -> None:
    base = minimal()
    merged = {**typing.cast(dict[str, object], base.get(section, {})), **values}
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {**base, section: merged}), environ={}, open_secrets=False)
    [problem] = problems_of(excinfo)
    assert problem.key == f"{section}.{next(iter(values))}"


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({}, "public"),
        ({"read_proxy": "public"}, "public"),
        ({"read_proxy": "off"}, "public"),
        ({"read_proxy": "private"}, "private"),
        ({"read_proxy": "private", "metrics": "public"}, "public"),
        ({"read_proxy": "private", "metrics": "off"}, "off"),
    ],
    ids=str,
)
def test_metrics_follow_a_private_read_proxy_unless_set(tmp_path: Path, server: dict[str, str], expected: str) -> None:
    config = load_config(write_config(tmp_path, minimal(server=server)), environ={}, open_secrets=False)
    assert config.settings.server.metrics == expected


def test_metrics_follow_a_private_read_proxy_set_by_environment(tmp_path: Path) -> None:
    env = {"NIKS3_SERVER__READ_PROXY": "private"}
    config = load_config(write_config(tmp_path, minimal()), environ=env, open_secrets=False)
    assert config.settings.server.metrics == "private"


def test_a_claims_longest_hold_is_at_least_its_lease(tmp_path: Path) -> None:
    path = write_config(tmp_path, minimal(gc={"claim_lease": "10m", "claim_max_lease": "5m"}))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={}, open_secrets=False)
    [problem] = problems_of(excinfo)
    assert problem.key == "gc" and "claim_max_lease (0:05:00) must be at least claim_lease (0:10:00)" in problem.reason
    ok = load_config(write_config(tmp_path, minimal(gc={"claim_max_lease": "2h"})), environ={}, open_secrets=False)
    assert ok.settings.gc.claim_max_lease == timedelta(hours=2)

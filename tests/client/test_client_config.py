"""Where the client finds its server URL and token (config.py)."""

from __future__ import annotations

import logging

import pytest

from niks3d.client.config import config_dir, load_client_config, normalize_server_url
from niks3d.errors import ClientError


def _token(path, value="tok-123", mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_option_beats_environment_beats_config_directory(tmp_path):
    xdg = tmp_path / "xdg"
    _token(xdg / "niks3" / "token", "from-dir")
    (xdg / "niks3" / "server").write_text("# comment\nhttp://dir.example:5751/\n")
    env_token = _token(tmp_path / "env-token", "from-env")
    opt_token = _token(tmp_path / "opt-token", "from-option")
    env = {"XDG_CONFIG_HOME": str(xdg)}

    cfg = load_client_config(environ=env)
    assert (cfg.server_url, cfg.token.value) == ("http://dir.example:5751", "from-dir")

    env |= {"NIKS3_TOKEN_FILE": str(env_token), "NIKS3_SERVER_URL": "https://env.example/cache"}
    cfg = load_client_config(environ=env)
    assert (cfg.server_url, cfg.token.value) == ("https://env.example/cache", "from-env")
    assert cfg.api_url == "https://env.example/cache/api/v1"

    cfg = load_client_config(server="http://opt.example", token_file=str(opt_token), environ=env)
    assert (cfg.server_url, cfg.token.value, cfg.token.source) == (
        "http://opt.example",
        "from-option",
        str(opt_token),
    )


def test_config_directory_defaults_to_home_dot_config():
    assert str(config_dir({"HOME": "/home/u"})) == "/home/u/.config/niks3"
    assert str(config_dir({"HOME": "/home/u", "XDG_CONFIG_HOME": "relative"})) == "/home/u/.config/niks3"
    assert str(config_dir({"XDG_CONFIG_HOME": "/etc/xdg"})) == "/etc/xdg/niks3"


def test_missing_token_names_every_place_to_put_one(tmp_path):
    with pytest.raises(ClientError, match=r"--token-file.*NIKS3_TOKEN_FILE.*niks3/token"):
        load_client_config(server="http://x", environ={"XDG_CONFIG_HOME": str(tmp_path)})
    cfg = load_client_config(server="http://x", environ={"XDG_CONFIG_HOME": str(tmp_path)}, token_required=False)
    assert cfg.token is None


def test_missing_server_is_an_error_naming_the_options(tmp_path):
    with pytest.raises(ClientError, match=r"--server.*NIKS3_SERVER_URL"):
        load_client_config(environ={"XDG_CONFIG_HOME": str(tmp_path)}, token_required=False)


@pytest.mark.parametrize(("content", "message"), [("", "is empty"), ("two words", "one token"), ("a\nb", "one token")])
def test_malformed_token_files_are_refused(tmp_path, content, message):
    path = tmp_path / "t"
    path.write_text(content)
    with pytest.raises(ClientError, match=message):
        load_client_config(server="http://x", token_file=str(path), environ={})


def test_a_token_file_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ClientError, match=f"{tmp_path}/nope does not exist"):
        load_client_config(server="http://x", token_file=str(tmp_path / "nope"), environ={})


def test_a_token_readable_by_others_warns_but_works(tmp_path, caplog):
    path = _token(tmp_path / "t", mode=0o644)
    with caplog.at_level(logging.WARNING):
        cfg = load_client_config(server="http://x", token_file=str(path), environ={})
    assert cfg.token.value == "tok-123"
    assert "group or others" in caplog.text
    assert "tok-123" not in caplog.text
    assert "tok-123" not in repr(cfg)


def test_a_private_token_does_not_warn(tmp_path, caplog):
    path = _token(tmp_path / "t", mode=0o600)
    with caplog.at_level(logging.WARNING):
        load_client_config(server="http://x", token_file=str(path), environ={})
    assert caplog.text == ""


@pytest.mark.parametrize("url", ["ftp://x", "localhost:5751", "http://", "http://x/?a=b", "http://u:p@x"])
def test_bad_server_urls_are_refused(url):
    with pytest.raises(ClientError, match="--server"):
        normalize_server_url(url, "--server")


def _pki(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.server.certkit import CA

    ca = CA("client config CA")
    cert, key = ca.issue("ci-1").write(tmp_path, "client")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    return ca.write(tmp_path / "ca.crt"), cert, key, encrypted


def test_tls_files_come_from_options_environment_or_the_config_directory(tmp_path):
    ca, cert, key, _ = _pki(tmp_path)
    url = "https://cache.example.org"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    plain = load_client_config(server=url, environ=env, token_required=False)
    assert plain.ssl_context is None and plain.tls_source is None
    # A client certificate is enough: no token is required.
    config = load_client_config(server=url, environ=env, client_cert=str(cert), client_key=str(key), ca_file=str(ca))
    assert config.token is None and config.ssl_context is not None
    assert config.tls_source == f"client certificate {cert}, CA file {ca}"
    assert config.ssl_context.get_ca_certs()[0]["subject"][-1][0][1] == "client config CA"
    from_env = load_client_config(
        server=url, environ={**env, "NIKS3_CLIENT_CERT": str(cert), "NIKS3_CLIENT_KEY": str(key)}
    )
    assert from_env.tls_source == f"client certificate {cert}"
    directory = tmp_path / "xdg" / "niks3"
    directory.mkdir(parents=True)
    for name, source in (("client.crt", cert), ("client.key", key), ("ca.crt", ca)):
        (directory / name).write_bytes(source.read_bytes())
    defaults = load_client_config(server=url, environ=env)
    assert defaults.tls_source == f"client certificate {directory / 'client.crt'}, CA file {directory / 'ca.crt'}"


def test_bad_tls_files_are_named(tmp_path):
    ca, cert, key, encrypted = _pki(tmp_path)
    url = "https://cache.example.org"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cases = [
        ({"server": "http://cache", "client_cert": str(cert), "client_key": str(key)}, "is not https://"),
        ({"client_key": str(key)}, "needs its certificate"),
        ({"ca_file": str(tmp_path / "missing.crt")}, f"CA file {tmp_path / 'missing.crt'} does not exist"),
        ({"ca_file": str(key)}, "holds no usable PEM certificate"),
        ({"client_cert": str(cert), "client_key": str(encrypted)}, "is encrypted"),
        ({"client_cert": str(cert), "client_key": str(ca)}, f"cannot use the client certificate {cert}"),
        ({"client_cert": str(tmp_path / "nope.crt")}, "does not exist"),
    ]
    for options, reason in cases:
        with pytest.raises(ClientError, match=reason):
            load_client_config(**{"server": url, **options}, environ=env, token_required=False)

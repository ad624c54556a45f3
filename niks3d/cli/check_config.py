"""``niks3d check-config FILE [--no-secrets]``: validate a configuration; say what is wrong, or what it sets.

Problems go to stdout, one per line as ``FILE: KEY: REASON`` (``FILE`` is the environment variable when an
override caused it), and the exit code is 1. A valid configuration prints a short summary (listen addresses,
bucket, signing keys by their public halves, tokens by name and scopes; never a secret) and exits 0. With
``--no-secrets`` the secret files are not opened, so the NixOS module can run it at build time.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

from niks3d.config import Config, load_config
from niks3d.errors import ConfigError

__all__ = ["check_config_command", "summary"]

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))


def format_duration(value: timedelta) -> str:
    """``timedelta(days=30)`` as ``30d``, in the largest unit that divides it, as the config writes it."""
    seconds = int(value.total_seconds())
    for suffix, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def summary(config: Config, *, secrets_opened: bool) -> list[str]:
    """The lines check-config prints for a valid configuration."""
    settings = config.settings
    s3 = settings.s3
    lines = [f"{config.source}: OK" + ("" if secrets_opened else " (structure only; secret files not opened)")]
    if config.overrides:
        lines.append(f"environment overrides: {', '.join(config.overrides)}")
    lines.append(f"listen: {', '.join(settings.server.listen)}")
    if settings.server.public_url:
        lines.append(f"public url: {settings.server.public_url}")
    lines.append(f"read proxy: {settings.server.read_proxy}")
    tls = settings.tls
    if tls is None:
        lines.append("tls: off (plain HTTP)")
    else:
        lines.append(f"tls: HTTPS on the TCP listeners, certificate {tls.certificate_file}")
        if tls.client_ca_file is None:
            lines.append("  client certificates: not asked for")
        else:
            lines.append(f"  client certificates: {tls.client_certificates}, signed by {tls.client_ca_file}")
            lines.append(f"  rules: {len(tls.clients)}" + ("" if tls.clients else " (certificates get no scope)"))
            lines.extend(f"    {rule.field} {rule.pattern}: {', '.join(rule.scopes)}" for rule in tls.clients)
    lines.append(f"database: {settings.database.url}")
    endpoint = s3.endpoint_url or "AWS"
    credentials = "static keys from files" if s3.access_key_id_file else "AWS default credential chain"
    lines.append(f"bucket: {s3.bucket} at {endpoint} (region {s3.region}; {credentials})")
    key_files = settings.signing.key_files
    if secrets_opened:
        lines.append(f"signing keys: {len(config.secrets.signing_keys)}")
        lines.extend(f"  {key.public_key().to_text()}" for key in config.secrets.signing_keys)
    else:
        lines.append(f"signing keys: {len(key_files)} file(s), not opened")
        lines.extend(f"  {path}" for path in key_files)
    lines.append(f"tokens: {len(settings.tokens)}" + ("" if settings.tokens else " (nobody can push)"))
    lines.extend(f"  {token.name}: {', '.join(token.scopes)}" for token in settings.tokens)
    if settings.oidc:
        lines.append(f"oidc issuers: {len(settings.oidc)}")
        for issuer in settings.oidc:
            trust = f"CA {issuer.ca_file}" if issuer.ca_file else "system CAs"
            lines.append(f"  {issuer.name}: {issuer.issuer} ({trust}), {len(issuer.rules)} rule(s)")
    gc = settings.gc
    lines.append(
        f"gc: keep pushed roots {format_duration(gc.older_than)}, "
        f"grace period {format_duration(gc.grace_period)}, "
        f"upload sessions expire after {format_duration(gc.session_expiry)}"
    )
    return lines


def check_config_command(args: argparse.Namespace) -> int:
    """Load ``args.file`` as the daemon would (``args.no_secrets``: without opening secrets) and report."""
    try:
        config = load_config(args.file, environ=os.environ, open_secrets=not args.no_secrets)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"niks3d: {count} problem{'s' if count != 1 else ''} in {args.file}", file=sys.stderr)
        return 1
    for line in summary(config, secrets_opened=not args.no_secrets):
        print(line)
    return 0

"""What the maintenance-command benchmarks (bench/gc.py, bench/import.py) share: a config for the throwaway
PostgreSQL and SeaweedFS they start, and a ``niks3d`` command run as a child that reports its own peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from niks3d.nix.signing import SecretKey


def write_config(workdir: Path, dsn: str, weed: Any, bucket: str, pool_max_size: int) -> Path:
    """``workdir/niks3d.toml`` for ``dsn`` and ``weed``'s ``bucket``, with its secrets in ``workdir/secrets``."""
    secret_dir = workdir / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)

    def secret(name: str, text: str) -> str:
        path = secret_dir / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    settings = {
        "database": {"url": dsn, "pool_max_size": pool_max_size},
        "s3": {
            "bucket": bucket,
            "endpoint_url": weed.endpoint_url,
            "region": weed.region,
            "addressing_style": "path",
            "access_key_id_file": secret("access", weed.access_key_id),
            "secret_access_key_file": secret("secret", weed.secret_access_key),
        },
        "signing": {"key_files": [secret("key", SecretKey.generate("bench-1").to_text())]},
        "logging": {"level": "warning", "format": "text"},
    }
    path = workdir / "niks3d.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


# The child reports its own high-water mark: VmHWM belongs to the process image after exec, whereas ru_maxrss
# would also count the pages of this (large) process that the fork shared with it.
_CHILD = (
    "import re, sys\n"
    "from niks3d.cli.main import main\n"
    "code = main()\n"
    "status = open('/proc/self/status').read()\n"
    "print('maxrss', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


def run_niks3d(config: Path, command: str, *extra: str) -> tuple[dict[str, Any], float, int]:
    """``niks3d COMMAND --json`` as a child; returns its JSON answer, wall seconds and its peak RSS in KiB."""
    argv = [sys.executable, "-c", _CHILD, command, "-c", str(config), "--json", *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"niks3d {command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return json.loads(proc.stdout), seconds, rss

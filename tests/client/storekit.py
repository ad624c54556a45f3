"""Helpers for client tests that need store paths of their own: fresh builds, deliberate corruption."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from niks3d.client.closure import PathInfo, query_closure
from niks3d.client.store import LocalStore
from niks3d.nix.storepath import StorePath
from testkit.nixfixtures import build_expr


def build_fresh(workdir: Path, name: str, script: str) -> str:
    """Build a derivation whose output is unique to this call (a random salt); returns its store path."""
    salt = secrets.token_hex(8)
    expr = (
        f'derivation {{ name = "{name}"; salt = "{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; {script}" ]; }}'
    )
    (path,) = build_expr(expr, workdir)
    return path


async def path_info(path: str, store: LocalStore | None = None) -> PathInfo:
    """The store's metadata of ``path``, through the client's own ``nix path-info`` call."""
    sp = StorePath.parse(path)
    return (await query_closure([sp], store or LocalStore.system()))[sp]


def corrupt(path: str, relative: str, data: bytes) -> None:
    """Overwrite a file of a registered store path behind Nix's back (the database keeps the old hash)."""
    target = Path(path) / relative if relative else Path(path)
    target.parent.chmod(0o755)
    target.chmod(0o644)
    target.write_bytes(data)
    target.chmod(0o444)
    target.parent.chmod(0o555)


def delete(*paths: str) -> None:
    """Remove a test's store paths again (best effort: they are garbage either way)."""
    subprocess.run(["nix-store", "--delete", *paths], capture_output=True, check=False)

"""The local Nix store the client pushes from: where its files, build logs and database live on disk.

By default that is the system store (``/nix/store``, logs under ``$NIX_LOG_DIR`` or ``/nix/var/log/nix``, the
database under ``$NIX_STATE_DIR`` or ``/nix/var/nix``). With ``--store DIR`` it is a chroot store, as
``nix --store DIR`` uses it: the same logical paths, stored below ``DIR``. Store paths keep their logical
``/nix/store/…`` names everywhere; only :meth:`LocalStore.real_path` and friends map them to disk.
"""

from __future__ import annotations

__all__ = ["LocalStore", "resolve_store_path"]

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from niks3d.errors import ClientError
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import STORE_DIR, StorePath

_MAX_LINK_HOPS = 40


@dataclass(frozen=True)
class LocalStore:
    """A local store: ``root`` is None for the system store, or the directory of a chroot store."""

    root: Path | None
    log_dir: Path
    state_dir: Path

    @classmethod
    def system(cls, environ: Mapping[str, str] | None = None) -> LocalStore:
        """The system store, honouring ``NIX_LOG_DIR`` and ``NIX_STATE_DIR`` as Nix does."""
        env = os.environ if environ is None else environ
        return cls(
            root=None,
            log_dir=Path(env.get("NIX_LOG_DIR") or "/nix/var/log/nix"),
            state_dir=Path(env.get("NIX_STATE_DIR") or "/nix/var/nix"),
        )

    @classmethod
    def chroot(cls, root: str | os.PathLike[str]) -> LocalStore:
        """A chroot store below ``root`` (``nix --store root``)."""
        base = Path(root).absolute()
        if not (base / STORE_DIR.lstrip("/")).is_dir():
            raise ClientError(f"{base} is not a chroot Nix store: {base}{STORE_DIR} is not a directory")
        return cls(root=base, log_dir=base / "nix/var/log/nix", state_dir=base / "nix/var/nix")

    @property
    def db_path(self) -> Path:
        """The SQLite database of the store (``<state>/db/db.sqlite``)."""
        return self.state_dir / "db" / "db.sqlite"

    @property
    def nix_args(self) -> list[str]:
        """Arguments that point ``nix`` at this store (none for the system store)."""
        return [] if self.root is None else ["--store", str(self.root)]

    def real_path(self, path: StorePath) -> Path:
        """Where the files of ``path`` are on disk."""
        if self.root is None:
            return Path(path.path)
        return self.root / path.path.lstrip("/")

    def describe(self) -> str:
        """A short name for messages."""
        return STORE_DIR if self.root is None else f"the chroot store {self.root}"


def _top_store_path(path: str) -> str | None:
    """``/nix/store/<basename>`` if ``path`` is that or lies inside it, else None."""
    prefix = STORE_DIR + "/"
    if not path.startswith(prefix):
        return None
    basename = path[len(prefix) :].split("/", 1)[0]
    return prefix + basename if basename else None


def resolve_store_path(arg: str, store: LocalStore, *, cwd: str | None = None, must_exist: bool = True) -> StorePath:
    """Turn a command-line argument into a store path, as Nix does for ``./result``-style links.

    ``arg`` may be a store path, a path inside one, or a symlink (chain) that leads into the store; links are
    followed one hop at a time only until the path is inside the store, so a store path that is itself a
    symlink stays what it is. With ``must_exist`` the path must be in ``store``. Raises :class:`ClientError`
    naming ``arg`` when it leads nowhere in the store.
    """
    path = os.path.normpath(Path(cwd or Path.cwd()) / arg)
    for _ in range(_MAX_LINK_HOPS):
        top = _top_store_path(path)
        if top is not None:
            break
        if not Path(path).is_symlink():
            if not os.path.lexists(path):
                raise ClientError(f"{arg!r} does not exist")
            raise ClientError(f"{arg!r} is neither a store path nor a symlink to one ({path} is outside {STORE_DIR})")
        target = os.readlink(path)  # noqa: PTH115 -- one hop at a time, like Nix's followLinksToStorePath
        path = os.path.normpath(Path(path).parent / target)
    else:
        raise ClientError(f"{arg!r}: too many levels of symbolic links")
    try:
        store_path = StorePath.parse(top)
    except NixFormatError as exc:
        raise ClientError(f"{arg!r} leads to {top}, which is not a valid store path: {exc}") from None
    if must_exist and not os.path.lexists(store.real_path(store_path)):
        raise ClientError(f"{arg!r}: {store_path} is not in {store.describe()}")
    return store_path

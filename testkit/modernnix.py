"""A modern Nix for the tests: Debian 13's ``nix`` (2.26) in a debootstrap chroot, with a store per test.

The host is Debian 12, whose ``nix-bin`` is Nix 2.8; users run 2.28 to 2.35. :func:`ensure_chroot` builds (once,
under a lock) a minimal Debian chroot with ``nix-bin``, ``python3`` and a venv holding the client's
dependencies (pyproject's ``[project] dependencies``), in ``/var/cache/niks3d-modern-nix/<suite>-<recipe hash>``
(``NIKS3_MODERN_NIX_CACHE`` moves it). A chroot is reused while its stamp matches the recipe; a change of the
recipe gives a new directory, so worktrees with different recipes never rebuild each other's. ``.ci/setup``
runs ``python -m testkit.modernnix`` so that CI fails early when the chroot cannot be made.

:class:`ModernNix` runs commands in the chroot. Every command gets its own private mount namespace
(``unshare --mount``) in which ``/proc``, ``/dev`` (with ``/dev/pts``), the per-test state directory (as
``/nix``), the repository's source (read-only, as ``/niks3-src``) and any extra host directories (at the same
path inside) are mounted, so no mount outlives the command: a killed run leaves nothing mounted, and any number
of sessions use one chroot at once. The chroot shares the host's network, so it reaches the daemon, PostgreSQL
and SeaweedFS on loopback. The store is ``/nix/store`` inside; on the host it is ``state/store``
(:meth:`ModernNix.host_path`). Needs root (mounts).

Use in a test (fixture ``modern_nix`` in ``tests/fixtures/modern_nix.py``)::

    def test_x(modern_nix: ModernNix, tmp_path: Path) -> None:
        out = modern_nix.nix("build", "--no-link", "--print-out-paths", "-f", str(tmp_path / "x.nix")).strip()
        modern_nix.host_path(out).read_text()            # the same file, read from the host
        modern_nix.niks3("push", "--server", url, out)   # the repo's client on Debian 13's Python
        modern_nix.version                               # (2, 26, 3): probe before using newer flags

``tmp_path`` is mounted at the same path inside, so files written there (expressions, netrc) can be named by
their host paths. ``NIKS3_MODERN_NIX_SUITE=sid`` (read by the test plugin) selects Debian unstable's newest Nix
instead (opt-in, not in CI).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SUITE",
    "ModernNix",
    "chroot_dir",
    "ensure_chroot",
    "modern_nix_missing_reason",
    "recipe",
]

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from niks3d.errors import ServiceError

log = logging.getLogger(__name__)

DEFAULT_SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_ENV = "NIKS3_MODERN_NIX_CACHE"
MIRROR_ENV = "NIKS3_DEBIAN_MIRROR"
DEFAULT_CACHE = Path("/var/cache/niks3d-modern-nix")
# Bump when the build steps below change in a way the recipe text does not show.
RECIPE_VERSION = 1
APT_PACKAGES = ("nix-bin", "python3", "python3-venv", "ca-certificates")
VENV = "/opt/niks3"
SOURCE_MOUNT = "/niks3-src"
STAMP = ".niks3-stamp"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
NIX_CONFIG = "\n".join(
    [
        "build-users-group =",
        "sandbox = false",
        "experimental-features = nix-command flakes ca-derivations",
        "substituters =",
        "warn-dirty = false",
    ]
)
_STDERR_TAIL = 3000
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


def _run(argv: Sequence[str], *, timeout: float, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    log.info("running %s", shlex.join(argv))
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{shlex.join(argv)} could not run: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") or proc.stdout.decode(errors="replace")
        raise ServiceError(f"{shlex.join(argv)} exited with status {proc.returncode}: {_tail(err)}")
    return proc


def client_requirements(pyproject: Path = SOURCE_ROOT / "pyproject.toml") -> tuple[str, ...]:
    """The package's runtime requirements (what the client needs in the chroot's venv)."""
    data = tomllib.loads(pyproject.read_text())
    return tuple(data["project"]["dependencies"])


def recipe(suite: str = DEFAULT_SUITE, mirror: str | None = None) -> str:
    """The text that names one chroot: its stamp, and (hashed) its directory."""
    lines = [
        f"recipe-version {RECIPE_VERSION}",
        f"suite {suite}",
        f"mirror {mirror or host_mirror()}",
        f"apt {' '.join(APT_PACKAGES)}",
        *(f"pip {req}" for req in client_requirements()),
    ]
    return "\n".join(lines) + "\n"


def host_mirror() -> str:
    """``NIKS3_DEBIAN_MIRROR``, else the first Debian archive the host's apt uses, else deb.debian.org."""
    if override := os.environ.get(MIRROR_ENV):
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        with contextlib.suppress(OSError):
            for match in re.finditer(r"(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", source.read_text()):
                uri = match.group(1).rstrip("/")
                if uri.endswith("/debian") and "security" not in uri:
                    return uri
    return DEFAULT_MIRROR


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def chroot_dir(suite: str = DEFAULT_SUITE) -> Path:
    """Where the chroot of ``suite`` for the current recipe lives (built or not)."""
    digest = hashlib.sha256(recipe(suite).encode()).hexdigest()[:12]
    return cache_dir() / f"{suite}-{digest}"


def modern_nix_missing_reason() -> str | None:
    """Why a chroot cannot be built or used here, or None."""
    if os.geteuid() != 0:
        return "the modern-Nix chroot needs root (mount namespaces and chroot)"
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not (chroot_dir() / STAMP).exists() and shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap) and no chroot is built"
    return None


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _remove_tree(path: Path) -> None:
    """Delete a chroot tree, first unmounting anything a run of an older harness left mounted in it."""
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-R", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise ServiceError(f"{path} still has mounts in it; not deleting it")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_namespace(root: Path, argv: Sequence[str], *, binds: Sequence[tuple[Path, str, bool]] = ()) -> list[str]:
    """argv that runs ``argv`` chrooted in ``root`` inside a private mount namespace with the standard mounts."""
    script = ["set -e", 'r="$1"; shift', 'mount -t proc proc "$r/proc"', 'mount --rbind /dev "$r/dev"']
    for host, inside, read_only in binds:
        target = shlex.quote(inside)
        script.append(f'mkdir -p "$r"{target}')
        script.append(f'mount --bind {shlex.quote(str(host))} "$r"{target}')
        if read_only:
            script.append(f'mount -o remount,bind,ro "$r"{target}')
    script.append('exec chroot "$r" "$@"')
    shell = ["/bin/sh", "-c", "\n".join(script), "sh", str(root)]
    return ["unshare", "--mount", "--propagation", "private", *shell, *argv]


def _clean_env(extra: Mapping[str, str] | None = None) -> list[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra or {})
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]


def _build(target: Path, suite: str, mirror: str, text: str) -> None:
    started = time.monotonic()
    log.warning("building the %s chroot in %s from %s (a few minutes)", suite, target, mirror)
    building = target.with_name(target.name + ".building")
    _remove_tree(building)
    building.mkdir(parents=True)
    if shutil.which("debootstrap") is None:
        raise ServiceError("debootstrap is not installed (apt-get install debootstrap)")
    # debootstrap mounts /proc and friends itself: in a private namespace they cannot outlive it.
    deboot = ["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase", suite]
    _run([*deboot, str(building), mirror], timeout=1800)
    for name in ("resolv.conf", "hosts"):
        shutil.copyfile(f"/etc/{name}", building / "etc" / name)
    env = _clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    apt = [*env, "apt-get", "-y", "--no-install-recommends", "install", *APT_PACKAGES]
    _run(_in_namespace(building, apt), timeout=1800)
    # After apt: the host's bundle (which may hold a local CA that pip needs) replaces Debian's.
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", building / "etc/ssl/certs/ca-certificates.crt")
    pip_env = _clean_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180"})
    _run(_in_namespace(building, [*pip_env, "python3", "-m", "venv", VENV]), timeout=600)
    pip = [*pip_env, f"{VENV}/bin/pip", "install", "--quiet", *client_requirements()]
    _run(_in_namespace(building, pip), timeout=1800)
    _run(_in_namespace(building, [*env, "apt-get", "clean"]), timeout=600)
    (building / "nix").mkdir(exist_ok=True)
    (building / STAMP).write_text(text)
    building.rename(target)
    log.warning("built the %s chroot in %s in %.0f s", suite, target, time.monotonic() - started)


def ensure_chroot(suite: str = DEFAULT_SUITE) -> Path:
    """The chroot for ``suite`` and the current recipe, built first if it is not there (under a lock)."""
    if reason := modern_nix_missing_reason():
        raise ServiceError(reason)
    mirror = host_mirror()
    text = recipe(suite, mirror)
    target = chroot_dir(suite)
    with _locked(cache_dir() / ".lock"):
        stamp = target / STAMP
        if stamp.exists() and stamp.read_text() == text:
            return target
        if target.exists():
            _remove_tree(target)
        _build(target, suite, mirror, text)
    return target


class ModernNix:
    """Run the chroot's ``nix`` (and the repo's client on the chroot's Python) with the store in ``state``."""

    def __init__(self, root: Path, state: Path, *, shared: Sequence[Path] = ()) -> None:
        self.root = root
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        (state / "home").mkdir(exist_ok=True)
        self._binds: list[tuple[Path, str, bool]] = [(state, "/nix", False), (SOURCE_ROOT, SOURCE_MOUNT, True)]
        self._binds += [(path, str(path), False) for path in shared]
        self._version: tuple[int, ...] | None = None

    def env(self, extra: Mapping[str, str] | None = None) -> list[str]:
        """``env -i`` with the chroot's clean environment: a private HOME and cache under the state directory."""
        base = {
            "HOME": "/nix/home",
            "XDG_CACHE_HOME": "/nix/home/.cache",
            "XDG_CONFIG_HOME": "/nix/home/.config",
            "NIX_CONFIG": NIX_CONFIG,
            "PYTHONPATH": SOURCE_MOUNT,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        base.update(extra or {})
        return _clean_env(base)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 600,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the chroot; with ``check`` a failure raises ServiceError with stderr's tail."""
        full = _in_namespace(self.root, [*self.env(env), *argv], binds=self._binds)
        if check:
            return _run(full, timeout=timeout, input=input)
        log.info("running %s", shlex.join(argv))
        return subprocess.run(full, input=input, capture_output=True, timeout=timeout, check=False)

    def nix(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> str:
        """``nix ARGS`` in the chroot; its stdout."""
        return self.run(["nix", *args], env=env, timeout=timeout).stdout.decode()

    def niks3(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> str:
        """The repo's ``niks3`` client, run by the chroot's Python from the mounted source; its stdout."""
        code = "from niks3d.client.main import main; raise SystemExit(main())"
        return self.run([f"{VENV}/bin/python", "-c", code, *args], env=env, timeout=timeout).stdout.decode()

    @property
    def version(self) -> tuple[int, ...]:
        """The chroot's Nix version, e.g. ``(2, 26, 3)``."""
        if self._version is None:
            match = _VERSION_RE.search(self.run(["nix", "--version"]).stdout.decode())
            if match is None:
                raise ServiceError("nix --version printed no version")
            self._version = tuple(int(part) for part in match.groups() if part is not None)
        return self._version

    def host_path(self, store_path: str) -> Path:
        """Where a ``/nix/store/...`` path of this store is on the host."""
        if not store_path.startswith("/nix/"):
            raise ValueError(f"{store_path!r} is not under /nix/")
        return self.state / store_path.removeprefix("/nix/")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testkit.modernnix [SUITE]``: build the chroot if needed and print its directory."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    suite = args[0] if args else DEFAULT_SUITE
    started = time.monotonic()
    try:
        root = ensure_chroot(suite)
        with tempfile.TemporaryDirectory(prefix="niks3-modern-nix-") as state:
            version = ModernNix(root, Path(state)).version
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{root} (nix {'.'.join(map(str, version))}, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

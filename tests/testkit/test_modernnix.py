"""The modern-Nix harness: the chroot's Nix is not the host's, its store is visible from the host, and no
mount outlives a command (not even a killed one)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from niks3d.errors import ServiceError
from testkit import modernnix
from testkit.modernnix import ModernNix

EXPR = """derivation {
  name = "modern-hello";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo hello from $(nix --version 2>/dev/null || echo the chroot) > $out" ];
}
"""


def _mounts_in(root: Path) -> list[str]:
    return modernnix._mounts_under(root)


def test_the_chroot_nix_is_modern_and_builds_into_a_store_the_host_reads(modern_nix: ModernNix, tmp_path: Path) -> None:
    assert modern_nix.version >= (2, 26)
    (tmp_path / "hello.nix").write_text(EXPR)
    out = modern_nix.nix("build", "--no-link", "--print-out-paths", "-f", str(tmp_path / "hello.nix")).strip()
    assert out.startswith("/nix/store/") and out.endswith("-modern-hello")
    assert modern_nix.host_path(out).read_text().startswith("hello from")
    # The chroot's store, not the host's.
    assert not Path(out).exists() or modern_nix.host_path(out).stat().st_ino != Path(out).stat().st_ino
    assert _mounts_in(modern_nix.root) == []


def test_the_client_runs_on_the_chroot_python_from_the_repo_source(modern_nix: ModernNix) -> None:
    version = modern_nix.run([f"{modernnix.VENV}/bin/python", "-c", "import sys; print(sys.version_info[:2])"])
    assert version.stdout.decode().strip() >= "(3, 13)"
    where = modern_nix.run([f"{modernnix.VENV}/bin/python", "-c", "import niks3d; print(niks3d.__file__)"])
    assert where.stdout.decode().startswith(modernnix.SOURCE_MOUNT + "/")
    assert "push" in modern_nix.niks3("--help")


def test_a_failing_command_raises_with_its_stderr(modern_nix: ModernNix) -> None:
    with pytest.raises(ServiceError, match="no-such-installable"):
        modern_nix.nix("path-info", "/nix/store/00000000000000000000000000000000-no-such-installable")


def test_a_killed_command_leaves_no_mount_behind(modern_nix: ModernNix) -> None:
    argv = modernnix._in_namespace(modern_nix.root, ["/bin/sleep", "60"], binds=modern_nix._binds)
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 30
        # The namespace's mounts are never visible here, even while the command runs.
        while time.monotonic() < deadline and proc.poll() is None:
            assert _mounts_in(modern_nix.root) == []
            time.sleep(0.2)
            break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _mounts_in(modern_nix.root) == []


def test_the_mirror_comes_from_the_hosts_apt_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(modernnix.MIRROR_ENV, "http://mirror.example/debian")
    assert modernnix.host_mirror() == "http://mirror.example/debian"
    assert "mirror http://mirror.example/debian" in modernnix.recipe()
    assert modernnix.chroot_dir() != modernnix.chroot_dir("sid")


def test_the_recipe_names_the_client_requirements() -> None:
    text = modernnix.recipe()
    for requirement in modernnix.client_requirements():
        assert f"pip {requirement}\n" in text

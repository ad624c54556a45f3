"""Real Nix store paths for tests and benchmarks, built with the real ``nix-build`` (no nixpkgs).

Every derivation is ``builtins.derivation`` with ``/bin/sh`` as builder (Debian's Nix runs with
``sandbox = false``, so the builder sees ``/bin`` and ``/usr/bin``). :func:`build_standard_fixtures`
builds the set the test suite relies on: the prototest closure of docs/protocol.md Appendix C, a tree with
every NAR corner case, odd file names, a reference graph, a large file, a build with a log, and a
content-addressed path. A ``salt`` gives the same shapes under fresh store paths with fresh contents (so
fresh NAR hashes too). Every command is logged before it runs; failures raise ``ServiceError``.
"""

from __future__ import annotations

__all__ = [
    "CA_MK",
    "CA_NIX",
    "SH_MK",
    "Fixtures",
    "GraphFixture",
    "add_to_store",
    "build_ca_closure",
    "build_expr",
    "build_standard_fixtures",
    "make_closure",
    "nix_missing_reason",
    "salted_expr",
]

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from niks3d.errors import ServiceError

log = logging.getLogger(__name__)

NO_SUBSTITUTERS = ("--option", "substituters", "")
_SALT_RE = re.compile(r"[A-Za-z0-9._+-]*")
_STDERR_TAIL = 2000

# docs/protocol.md Appendix C, character for character: with no salt it gives the documented store paths.
PROTOTEST_EXPR = """\
let
  dep = derivation {
    name = "protodep";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo dependency-data > $out" ];
  };
in derivation {
  name = "prototest-1.0";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    export PATH=/bin:/usr/bin; mkdir -p $out/bin $out/share/Zeta $out/share/alpha
    printf "#!/bin/sh\\necho hi\\n" > $out/bin/hi
    chmod +x $out/bin/hi
    echo "ref ${dep}" > $out/share/ref.txt
    printf x > $out/share/alpha/one
    : > $out/share/empty
    ln -s bin/hi $out/link
    ln -s $out/share $out/selfref
  '' ];
}
"""

_TRICKY = r"""
mkdir -p $out/bin $out/empty-dir $out/nested/a/b/c $out/names $out/Zeta $out/alpha $out/Beta $out/beta
printf 'plain text\n' > $out/plain.txt
printf '0123456789abcdef' > $out/sixteen
printf '#!/bin/sh\necho tricky\n' > $out/bin/run
chmod 755 $out/bin/run
printf 'owner-only\n' > $out/bin/owner-x
chmod 700 $out/bin/owner-x
printf 'group-x\n' > $out/bin/group-x
chmod 654 $out/bin/group-x
: > $out/empty
printf '%s' "$salt" > $out/salt
ln -s plain.txt $out/rel-link
ln -s ../plain.txt $out/nested/up-link
ln -s $out/plain.txt $out/abs-link
ln -s /nonexistent/dangling $out/dangling-abs
ln -s does-not-exist $out/dangling-rel
ln -s bin $out/dir-link
printf deep > $out/nested/a/b/c/deep.txt
printf Z > $out/Zeta/z; printf a > $out/alpha/a; printf B > $out/Beta/b; printf b > $out/beta/b
for n in 'a+b' 'q?x' 'k=v' '.hidden' '_under' '-dash' 'dots.in.name' 'with space' 'UPPER' 'lower' '0digit'; do
  printf '%s' "$n" > "$out/names/$n"
done
"""

_ODD_NAMES = r"""
mkdir $out
cd $out
for f in 'tab\tname' 'nl\nname' 'cr\rname' 'quote"name' 'back\\slash' 'ctl\001\002\037' \
         'bell\007ff\014' 'del\177x' 'latin1-\351t\351' 'utf8-\303\251t\303\251' \
         'emoji-\360\237\220\261' 'invalid-\200\300'; do
  : > "$(printf "$f")"
done
ln -s "$(printf 'target\twith\001ctl\377"q\\b')" odd-link
printf '%s' "$salt" > salt
"""

# The ``mk`` of every test expression: a derivation whose builder is /bin/sh running ``script``, with the
# expression's ``salt`` as an attribute, so that a fresh salt gives fresh store paths and contents.
SH_MK = r"""  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];
  };
"""
# The same for content-addressed derivations (they need the ca-derivations feature: CA_NIX).
CA_MK = r"""  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    args = [ "-c" script ];
  };
"""


def salted_expr(bindings: str, salt: str, *, mk: str = SH_MK) -> str:
    """A test expression: ``let salt = "<salt>";``, the ``mk`` above, then ``bindings`` (the expression's own
    bindings, then ``in ...``)."""
    _check_salt(salt)
    return f'let\n  salt = "{salt}";\n{mk}{bindings}'


_GRAPH = r"""
  leaf = mk "graph-leaf" "mkdir $out; echo leaf $salt > $out/data";
  middleA = mk "graph-middle-a" "mkdir $out; echo 'uses ${leaf}' > $out/ref; echo a $salt > $out/data";
  middleB = mk "graph-middle-b" "mkdir $out; echo 'uses ${leaf}' > $out/ref; echo b $salt > $out/data";
  top = mk "graph-top" "mkdir $out; echo '${middleA} ${middleB}' > $out/refs; echo $out > $out/self";
in
"""


@dataclass(frozen=True)
class GraphFixture:
    """A reference graph: ``top`` refers to both middles and to itself; both middles refer to ``leaf``."""

    top: str
    middle_a: str
    middle_b: str
    leaf: str

    def paths(self) -> tuple[str, ...]:
        """The four store paths, top first."""
        return (self.top, self.middle_a, self.middle_b, self.leaf)


@dataclass(frozen=True)
class Fixtures:
    """The standard store paths (full ``/nix/store/...`` paths) that the tests rely on."""

    salt: str
    prototest: str
    protodep: str
    tricky: str
    odd_names: str
    graph: GraphFixture
    large: str
    with_log: str
    with_log_drv: str
    ca_path: str

    def all_paths(self) -> tuple[str, ...]:
        """Every output path (not the .drv), each once."""
        return (
            self.prototest,
            self.protodep,
            self.tricky,
            self.odd_names,
            *self.graph.paths(),
            self.large,
            self.with_log,
            self.ca_path,
        )


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


def _run(argv: list[str], *, timeout: float = 900) -> str:
    log.info("running %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{shlex.join(argv)} could not run: {exc}") from exc
    if proc.returncode != 0:
        raise ServiceError(f"{shlex.join(argv)} exited with status {proc.returncode}: {_tail(proc.stderr)}")
    return proc.stdout


def nix_missing_reason() -> str | None:
    """Why the real Nix tools cannot be used here, or None when nix-build, nix-store and nix all work."""
    for tool in ("nix-build", "nix-store", "nix"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    try:
        _run(["nix-store", "--version"], timeout=60)
    except ServiceError as exc:
        return str(exc)
    probe = Path("/nix/store")
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        return f"{probe} is not writable by this user (the fixtures need a single-user Nix)"
    return None


def _check_salt(salt: str) -> None:
    if not _SALT_RE.fullmatch(salt):
        raise ValueError(f"salt {salt!r} may only contain letters, digits and . _ + -")


def build_expr(expr: str, workdir: Path, *, attr: str | None = None) -> list[str]:
    """Write ``expr`` to a .nix file in ``workdir``, build it with ``nix-build``, return the output paths.

    Raises :class:`ServiceError` with the tail of nix-build's stderr when the build fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    nix_file = workdir / f"expr-{hashlib.sha256(expr.encode()).hexdigest()[:16]}.nix"
    nix_file.write_text(expr, encoding="utf-8")
    argv = ["nix-build", str(nix_file), "--no-out-link", *NO_SUBSTITUTERS]
    argv += ["--max-jobs", str(os.cpu_count() or 1)]
    if attr is not None:
        argv += ["-A", attr]
    return [line for line in _run(argv).splitlines() if line.strip()]


CA_NIX = ("--extra-experimental-features", "nix-command ca-derivations")


def build_ca_closure(workdir: Path, store: Path, prefix: str) -> subprocess.CompletedProcess[str]:
    """Build a content-addressed ``<prefix>catop`` whose output refers to a CA ``<prefix>cadep`` into ``store``.

    The expression is written to ``workdir/ca.nix``. Debian's Nix 2.8 builds CA derivations only into a chroot
    store (``--store``), whose sandbox must see ``/bin/sh``. The finished process is returned (stdout: the output
    path), so that each caller decides what a failed build means for its test.
    """
    bindings = f"""\
  dep = mk "{prefix}cadep" "echo {prefix}ca-dependency > $out";
in mk "{prefix}catop" "echo ${{dep}} > $out"
"""
    expr = salted_expr(bindings, "", mk=CA_MK)
    (workdir / "ca.nix").write_text(expr, encoding="utf-8")
    argv = ["nix-build", str(workdir / "ca.nix"), "--store", str(store), "--no-out-link", *CA_NIX, *NO_SUBSTITUTERS]
    argv += ["--option", "extra-sandbox-paths", "/bin /lib /lib64 /usr"]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def add_to_store(file: Path) -> str:
    """``nix-store --add`` a file: the result is a content-addressed (``fixed:r:sha256``) store path."""
    out = _run(["nix-store", "--add", str(file)]).strip()
    if not out.startswith("/"):
        raise ServiceError(f"nix-store --add {file} printed {out!r} instead of a store path")
    return out


def _deriver(path: str) -> str:
    return _run(["nix-store", "--query", "--deriver", path]).strip()


def _derivation(name: str, script: str, salt: str) -> str:
    return (
        f'derivation {{ name = "{name}"; salt = "{salt}"; system = builtins.currentSystem; '
        f'builder = "/bin/sh"; args = [ "-c" ({_nix_string("export PATH=/bin:/usr/bin" + script)}) ]; }}'
    )


def _nix_string(text: str) -> str:
    """A Nix string literal holding ``text`` verbatim (no antiquotation)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _prototest_expr(salt: str) -> str:
    if not salt:
        return PROTOTEST_EXPR
    salted = PROTOTEST_EXPR.replace("echo dependency-data > $out", f"echo dependency-data-{salt} > $out")
    return salted.replace("ln -s bin/hi $out/link", f"ln -s bin/hi $out/link; echo {salt} > $out/share/salt")


def _by_name(paths: list[str]) -> dict[str, str]:
    return {Path(p).name.split("-", 1)[1]: p for p in paths}


def build_standard_fixtures(workdir: Path, salt: str = "", *, large_mib: int = 8) -> Fixtures:
    """Build (or find already built) the standard fixtures; ``salt`` gives fresh store paths and contents."""
    _check_salt(salt)
    if large_mib < 1:
        raise ValueError(f"large_mib must be at least 1, got {large_mib}")
    proto = build_expr(_prototest_expr(salt), workdir)
    if len(proto) != 1:
        raise ServiceError(f"the prototest expression built {proto!r} instead of one path")
    prototest = proto[0]
    refs = _run(["nix-store", "--query", "--references", prototest]).split()
    protodep = next((p for p in refs if p.endswith("-protodep")), None)
    if protodep is None:
        raise ServiceError(f"{prototest} does not refer to a protodep path: {refs!r}")

    large_bytes = large_mib << 20
    members = {
        "tricky": _derivation("tricky", _TRICKY, salt),
        "odd-names": _derivation("odd-names", _ODD_NAMES, salt),
        f"large-{large_mib}mib": _derivation(
            f"large-{large_mib}mib", f"\nmkdir $out\nhead -c {large_bytes} /dev/urandom > $out/blob\n", salt
        ),
        "with-log": _derivation(
            "with-log",
            '\nfor i in 1 2 3; do echo "fixture stdout line $i"; echo "fixture stderr line $i" >&2; done'
            '\necho "$salt" > $out\n',
            salt,
        ),
    }
    expr = salted_expr(
        _GRAPH + "[ top middleA middleB leaf " + " ".join(f"({body})" for body in members.values()) + " ]\n", salt
    )
    built = _by_name(build_expr(expr, workdir))
    missing = [name for name in ("graph-top", *members) if name not in built]
    if missing:
        raise ServiceError(f"nix-build did not report outputs for {missing!r}: {sorted(built)!r}")

    ca_file = workdir / f"ca-{salt or 'plain'}" / "hello.txt"
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_text(f"hello {salt}\n" if salt else "hello\n", encoding="utf-8")

    return Fixtures(
        salt=salt,
        prototest=prototest,
        protodep=protodep,
        tricky=built["tricky"],
        odd_names=built["odd-names"],
        graph=GraphFixture(
            top=built["graph-top"],
            middle_a=built["graph-middle-a"],
            middle_b=built["graph-middle-b"],
            leaf=built["graph-leaf"],
        ),
        large=built[f"large-{large_mib}mib"],
        with_log=built["with-log"],
        with_log_drv=_deriver(built["with-log"]),
        ca_path=add_to_store(ca_file),
    )


def make_closure(workdir: Path, salt: str, n_paths: int, total_bytes: int) -> list[str]:
    """Build ``n_paths`` store paths whose outputs add up to about ``total_bytes`` random bytes.

    They form a binary tree of references: path ``i`` refers to paths ``2i+1`` and ``2i+2``, so the first path
    returned is the root whose closure is all of them. Paths are returned in that index order.
    """
    _check_salt(salt)
    if n_paths < 1:
        raise ValueError(f"n_paths must be at least 1, got {n_paths}")
    each = max(total_bytes, 0) // n_paths
    lines = [f'let salt = "{salt}";']
    for i in range(n_paths - 1, -1, -1):
        children = [c for c in (2 * i + 1, 2 * i + 2) if c < n_paths]
        refs = "".join(f"echo ${{p{c}}} >> $out/refs; " for c in children)
        script = f"mkdir $out; echo {i} $salt > $out/id; {refs}head -c {each} /dev/urandom > $out/data"
        lines.append(
            f'  p{i} = derivation {{ name = "closure-{i}"; inherit salt; system = builtins.currentSystem; '
            f'builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; {script}" ]; }};'
        )
    lines.append("in [ " + " ".join(f"p{i}" for i in range(n_paths)) + " ]")
    paths = build_expr("\n".join(lines) + "\n", workdir)
    if len(paths) != n_paths:
        raise ServiceError(f"nix-build built {len(paths)} paths instead of {n_paths}")
    order = {Path(p).name.split("-", 1)[1]: p for p in paths}
    return [order[f"closure-{i}"] for i in range(n_paths)]

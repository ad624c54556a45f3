"""The fast post-build hook: a POSIX shell script that queues with the ``sqlite3`` shell (docs/client.md).

Nix 2.8 runs the post-build hook synchronously in its build loop, so its start-up time is paid once per built
derivation; starting Python alone costs about 10 ms, while ``sh`` plus ``sqlite3`` cost a few. The script written
here (``niks3 hook-script``) does the common case itself: it checks every word of ``OUT_PATHS`` (and
``DRV_PATH``) against the store path rules with ``case`` patterns, and inserts them into the same queue, with
the same statement as :meth:`Queue.add`, in one ``sqlite3`` call. With Nix 2.8.0, which passes ``OUT_PATHS``
empty (NixOS/nix#6446), it reads the outputs from the head of the ``.drv`` file with parameter expansions, as
:func:`niks3d.client.hook.outputs_from_drv` does.

Anything unusual (no ``sqlite3``, a word that is not a store path, a queue that cannot be written or does not
have its tables yet) is handed to the Python hook (``python -S``, the package on ``PYTHONPATH``), which does the
same work slowly and says on stderr what was wrong. Either way the script exits 0. Globbing is off (``set -f``)
and only checked store paths, whose characters exclude quotes, reach the SQL text.
"""

from __future__ import annotations

__all__ = ["hook_script_text", "write_hook_script"]

import shlex
import shutil
import sys
from pathlib import Path

import niks3d
from niks3d.client.queue import ON_CONFLICT_REFRESH

_NIX32_CLASS = "[0123456789abcdfghijklmnpqrsvwxyz]"
_HASH = _NIX32_CLASS * 32
_NOW = "(julianday('now') - 2440587.5) * 86400.0"

_TEMPLATE = r"""#!/bin/sh
# niks3's post-build hook for the queue below, written by `niks3 hook-script` (docs/client.md). It only queues
# what Nix built; `niks3 agent` uploads it. It always exits 0: a failing hook would stop Nix's build.
set -f
q=@QUEUE@
sqlite=@SQLITE3@
slow() {
  PYTHONPATH=@PYTHONPATH@
  export PYTHONPATH
  exec @PYTHON@ -S -c 'from niks3d.client.hook import main; raise SystemExit(main())' --queue "$q"
}
ok() {
  case $1 in
    /nix/store/*/*) return 1 ;;
    /nix/store/@HASH@-. | /nix/store/@HASH@-.. | /nix/store/@HASH@-.-* | /nix/store/@HASH@-..-*) return 1 ;;
    /nix/store/@HASH@-*[!0-9A-Za-z+._?=-]*) return 1 ;;
    /nix/store/@HASH@-?*) [ ${#1} -le 255 ] ;;
    *) return 1 ;;
  esac
}
[ -n "$sqlite" ] || slow
drv=NULL
if [ -n "$DRV_PATH" ]; then
  ok "$DRV_PATH" || slow
  drv="'$DRV_PATH'"
fi
paths=$OUT_PATHS
if [ -z "$paths" ] && [ -n "$DRV_PATH" ]; then
  # Nix 2.8.0 passes OUT_PATHS empty (NixOS/nix#6446); a .drv starts with its outputs: Derive([("out","/nix/…","",""),…
  rest=
  IFS= read -r rest < "$DRV_PATH" || [ -n "$rest" ] || slow
  case $rest in 'Derive([("'*) ;; *) slow ;; esac
  rest=${rest#Derive(\[}
  while :; do
    case $rest in '("'*) ;; *) break ;; esac
    rest=${rest#*\",\"}
    p=${rest%%\"*}
    if [ -n "$p" ] && [ -e "$p" ]; then paths="$paths $p"; fi
    rest=${rest#*\)}
    rest=${rest#,}
  done
fi
values=
for p in $paths; do
  ok "$p" || slow
  values="$values${values:+,}('$p',$drv,'hook',@NOW@)"
done
[ -n "$values" ] || slow
"$sqlite" -batch -bail -cmd '.timeout 30000' -cmd 'PRAGMA synchronous=NORMAL' "$q" \
  "INSERT INTO entries (path, drv, source, queued_at) VALUES $values @UPSERT@;" </dev/null >/dev/null 2>&1 || slow
exit 0
"""


def hook_script_text(queue_path: str, *, sqlite3: str | None) -> str:
    """The script for ``queue_path``; ``sqlite3`` is the shell's path (None: always take the Python hook)."""
    package_root = str(Path(niks3d.__file__).resolve().parent.parent)
    search = ":".join(dict.fromkeys([package_root, *(p for p in sys.path if p)]))
    replacements = {
        "@QUEUE@": shlex.quote(queue_path),
        "@SQLITE3@": shlex.quote(sqlite3 or ""),
        "@PYTHONPATH@": shlex.quote(search),
        "@PYTHON@": shlex.quote(sys.executable),
        "@HASH@": _HASH,
        "@NOW@": _NOW,
        "@UPSERT@": ON_CONFLICT_REFRESH,
    }
    text = _TEMPLATE
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


def write_hook_script(path: Path, queue_path: str, *, sqlite3: str | None = "") -> Path:
    """Write the hook script to ``path`` (mode 0755); ``sqlite3=""`` looks the shell up on ``$PATH``."""
    found = shutil.which("sqlite3") if sqlite3 == "" else sqlite3
    path.write_text(hook_script_text(queue_path, sqlite3=found), encoding="utf-8")
    path.chmod(0o755)
    return path

#!/bin/sh
# post-build-hook for machines with stock Nix only (no niks3 client): it only QUEUES the outputs and returns,
# so the build never waits for the network. drain.sh uploads the queue with `nix copy --to`
# (docs/client.md, "Pushing with stock Nix"). With the niks3 client installed, prefer `niks3 hook-script`
# and `niks3 agent`: the same idea with a crash-safe SQLite queue and one push per batch.
#
#   post-build-hook = /etc/nix/niks3-copy-hook        (nix.conf; a hook exiting non-zero stops Nix's builds)
set -u
QUEUE=${NIKS3_COPY_QUEUE:-/var/lib/niks3-copy/queue}
for path in ${OUT_PATHS:-}; do
    case $path in
        /nix/store/*) ;;
        *) echo "niks3-copy-hook: ignoring $path" >&2; continue ;;
    esac
    # One line per path; lines shorter than PIPE_BUF are appended atomically, so concurrent hooks are fine.
    printf '%s\n' "$path" >> "$QUEUE" || echo "niks3-copy-hook: cannot write $QUEUE" >&2
done
exit 0

#!/bin/sh
# Drains the queue of post-build-hook.sh into niks3d with stock Nix, in a loop (run it as a service).
# The token (push scope) is in the netrc file: `machine cache.example.org password <token>`.
# A batch is taken by renaming the queue file, and put back if `nix copy` fails, so nothing queued is lost;
# uploading a path twice is harmless (niks3d answers a narinfo it already has with a no-op).
set -eu
QUEUE=${NIKS3_COPY_QUEUE:-/var/lib/niks3-copy/queue}
CACHE=${NIKS3_CACHE:-https://cache.example.org/?compression=zstd}
while :; do
    if [ -s "$QUEUE" ]; then
        batch="$QUEUE.batch.$$"
        mv "$QUEUE" "$batch"
        sleep 1   # a hook that opened the old file just before the rename finishes its line
        # Paths deleted from the local store since they were queued cannot be copied any more: skip them.
        paths=$(sort -u "$batch" | while read -r p; do [ -e "$p" ] && echo "$p"; done)
        # shellcheck disable=SC2086 # one word per store path
        if [ -z "$paths" ] || nix --extra-experimental-features nix-command copy --to "$CACHE" \
                --option netrc-file /etc/nix/netrc $paths; then
            rm -f "$batch"
        else
            cat "$batch" >> "$QUEUE" && rm -f "$batch"
            sleep 30
        fi
    fi
    sleep 5
done

"""Stock Nix as a writer: what ``nix copy --to http://<niks3d>`` PUTs, checked and published as a push is
(docs/api.md, stock Nix as a writer). Handlers live in :mod:`niks3d.server.writes`."""

from __future__ import annotations

__all__ = ["commit_narinfo", "ingest_nar", "put_cache_info", "put_listing", "put_log"]

from niks3d.writes.commit import commit_narinfo
from niks3d.writes.files import put_cache_info, put_listing, put_log
from niks3d.writes.nar import ingest_nar

"""The public surface of niks3d.gc is pinned: changing it is a deliberate act that shows up here."""

from __future__ import annotations

import niks3d.gc

EXPECTED = ["GcContext", "GcParams", "GcRunning", "RunRow", "claim_run", "collect", "delete_path"]


def test_the_gc_package_exports_exactly_its_public_surface() -> None:
    assert sorted(niks3d.gc.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert getattr(niks3d.gc, name) is not None

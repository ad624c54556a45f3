"""niks3d.gc"""

from __future__ import annotations

__all__: list[str] = []

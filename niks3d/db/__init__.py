"""niks3d.db"""

from __future__ import annotations

__all__: list[str] = []

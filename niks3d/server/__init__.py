"""niks3d.server"""

from __future__ import annotations

__all__: list[str] = []

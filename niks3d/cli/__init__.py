"""niks3d.cli"""

from __future__ import annotations

__all__: list[str] = []

"""niks3d: a self-hosted Nix binary cache on S3, tracked in PostgreSQL, with garbage collection."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

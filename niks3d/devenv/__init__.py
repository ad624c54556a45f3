"""Throwaway real services and fixtures for tests and `niks3d dev`."""

from __future__ import annotations

__all__: list[str] = []

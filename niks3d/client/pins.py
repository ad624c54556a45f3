"""``niks3 pins create|list|delete``: named GC roots that never expire (docs/api.md, "Pins").

A pin names a published store path; garbage collection keeps its closure until the pin is deleted or moved.
``push --pin NAME`` pins the pushed root once the push has completed.
"""

from __future__ import annotations

__all__ = ["PIN_NAME_RE", "check_pin_name", "create_pin", "delete_pin", "format_pins", "list_pins"]

import re
from collections.abc import Sequence

from niks3d.client.api import ApiClient
from niks3d.client.models import Pin
from niks3d.errors import ClientError
from niks3d.nix.storepath import StorePath

PIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_pin_name(name: str) -> str:
    """Return ``name`` if the server would take it as a pin name, else raise :class:`ClientError`."""
    if not PIN_NAME_RE.fullmatch(name):
        raise ClientError(
            f"pin name {name[:140]!r} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


async def create_pin(api: ApiClient, name: str, path: StorePath) -> Pin:
    """Create the pin ``name`` on ``path`` (or move it there); the path must already be pushed."""
    return await api.put_pin(check_pin_name(name), path.path)


async def list_pins(api: ApiClient) -> list[Pin]:
    """Every pin, sorted by name."""
    return sorted(await api.list_pins(), key=lambda p: p.name)


async def delete_pin(api: ApiClient, name: str) -> bool:
    """Delete the pin ``name``; False if there was none."""
    return await api.delete_pin(check_pin_name(name))


def format_pins(pins: Sequence[Pin]) -> str:
    """A table for people: name, path, last change and who made the pin."""
    if not pins:
        return "no pins"
    rows = [("NAME", "PATH", "UPDATED", "BY")]
    rows += [(p.name, p.path, p.updated_at or p.created_at or "-", p.created_by or "-") for p in pins]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3] for row in rows]
    return "\n".join(line.rstrip() for line in lines)

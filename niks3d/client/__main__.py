"""``python -m niks3d.client``: the ``niks3`` command without the console script."""

from __future__ import annotations

__all__: list[str] = []

import sys

from niks3d.client.entry import main

sys.exit(main())

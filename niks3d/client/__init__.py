"""The ``niks3`` client: pushes store paths to a niks3d server and manages pins (docs/client.md).

The command line is :func:`main`; programs can drive a push with :func:`push` and an :class:`ApiClient`.
"""

from __future__ import annotations

from niks3d.client.api import ApiClient
from niks3d.client.config import ClientConfig, load_client_config
from niks3d.client.main import main
from niks3d.client.push import PushOptions, PushResult, push
from niks3d.client.store import LocalStore

__all__ = ["ApiClient", "ClientConfig", "LocalStore", "PushOptions", "PushResult", "load_client_config", "main", "push"]

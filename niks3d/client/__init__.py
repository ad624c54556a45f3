"""The ``niks3`` client: pushes store paths to a niks3d server and manages pins (docs/client.md).

The command line is :func:`main`; programs can drive a push with :func:`push` and an :class:`ApiClient`.
The names are imported on first use, so that ``niks3 hook`` (:mod:`niks3d.client.hook`), which Nix runs after
every build, does not pay for aiohttp and the push machinery.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the hook must not pay for importing typing

if TYPE_CHECKING:
    from niks3d.client.api import ApiClient
    from niks3d.client.config import ClientConfig, load_client_config
    from niks3d.client.main import main
    from niks3d.client.push import PushOptions, PushResult, push
    from niks3d.client.store import LocalStore

__all__ = ["ApiClient", "ClientConfig", "LocalStore", "PushOptions", "PushResult", "load_client_config", "main", "push"]

_WHERE = {
    "ApiClient": "api",
    "ClientConfig": "config",
    "load_client_config": "config",
    "main": "main",
    "PushOptions": "push",
    "PushResult": "push",
    "push": "push",
    "LocalStore": "store",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'niks3d.client' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 -- importlib itself costs the hook an import

    value = getattr(importlib.import_module(f"niks3d.client.{module}"), name)
    globals()[name] = value
    return value

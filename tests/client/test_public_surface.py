"""The public surface of niks3d.client is pinned: changing it is a deliberate act that shows up here."""

from __future__ import annotations

import niks3d.client


def test_client_exports():
    assert sorted(niks3d.client.__all__) == [
        "ApiClient",
        "ClientConfig",
        "LocalStore",
        "PushOptions",
        "PushResult",
        "load_client_config",
        "main",
        "push",
    ]
    for name in niks3d.client.__all__:
        assert getattr(niks3d.client, name) is not None


def test_console_script_entry_point_is_main():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "niks3"]
    assert script.value == "niks3d.client.entry:main"

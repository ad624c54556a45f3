"""Throwaway real services and fixtures for tests and `niks3d dev`."""

from __future__ import annotations

__all__ = [
    "PostgresServer",
    "SeaweedServer",
    "async_postgres_server",
    "async_seaweed_server",
    "free_port",
    "postgres_server",
    "seaweed_server",
]

from niks3d.devenv.postgres import PostgresServer, async_postgres_server, postgres_server
from niks3d.devenv.process import free_port
from niks3d.devenv.seaweedfs import SeaweedServer, async_seaweed_server, seaweed_server

"""PostgreSQL: the connection pool, schema migrations, and the queries of each domain (in submodules).

The schema and the locking rules are described in ``docs/database.md``.
"""

from __future__ import annotations

__all__ = ["DbPool", "check_schema", "create_pool", "migrate", "open_pool", "ping"]

from niks3d.db.migrate import check_schema, migrate
from niks3d.db.pool import DbPool, create_pool, open_pool, ping

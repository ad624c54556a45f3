"""Reading the bucket and the database directly, to check what a test's requests really wrote."""

from __future__ import annotations

from typing import Any

import asyncpg
import botocore.session


def s3_client(s3: Any) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
    )


def bucket_keys(s3: Any) -> set[str]:
    client = s3_client(s3)
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def get_object(s3: Any, key: str) -> tuple[bytes, dict[str, Any]]:
    response = s3_client(s3).get_object(Bucket=s3.bucket, Key=key)
    return response["Body"].read(), response


async def table_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        counts = {}
        for table in (
            "objects",
            "store_paths",
            "path_references",
            "path_files",
            "roots",
            "pins",
            "upload_sessions",
            "session_claims",
        ):
            counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return counts
    finally:
        await conn.close()

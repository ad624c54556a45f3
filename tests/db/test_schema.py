"""The schema on a real PostgreSQL: garbage is refused; CASCADE, RESTRICT and row locks behave as documented.

Each refusal asserts the name of the constraint that fired, so a test cannot pass because some other check
happened to reject the row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from niks3d.config import DatabaseSettings
from niks3d.db import uploads
from niks3d.db.migrate import migrate
from niks3d.db.pool import open_pool

pytestmark = pytest.mark.postgres

# Hash parts from docs/protocol.md's fixtures; any 32 nix32 characters would do.
TEST = "b3rplkk2fihip23mj9kdvzxdw7zwh64b"  # prototest-1.0, references DEP and itself
DEP = "w253jl7q3l5ia8blv4z6y1mkji7hs53l"  # protodep
OTHER = "i9pmrzmpshapij2kin22pff6fc2adavx"  # hello.txt
DRV = "lvmwl5rasr8xhmlh3d1hwjzck3653mqh-prototest-1.0.drv"
NAR_HASH = "sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"
FILE_HASH = "sha256:0f6rnj248f7z62whh9dbasrn7rh5p1zawgzxfnnr7swgwacprhw8"
REALISATION = "realisations/sha256:cf6bb86c7c41d538bbf2fb364a2945ff148fe494d91d53acf6cda8d1287d0ad5!out.doi"


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(DatabaseSettings(url=database_dsn, pool_max_size=4), None) as opened:
        await migrate(opened)
        yield opened


def nar_key_for(hash_part: str) -> str:
    return f"nar/{(hash_part * 2)[:52]}.nar.zst"


def store_path_row(hash_part: str, name: str = "pkg", **overrides: Any) -> dict[str, Any]:
    """A consistent store_paths row; ``narinfo`` is rendered from the final values unless overridden."""
    row: dict[str, Any] = {
        "hash": hash_part,
        "name": name,
        "nar_hash": NAR_HASH,
        "nar_size": 2072,
        "nar_key": nar_key_for(hash_part),
        "narinfo_key": f"{hash_part}.narinfo",
        "compression": "zstd",
        "file_hash": FILE_HASH,
        "file_size": 431,
        "deriver": DRV,
        "ca": None,
    }
    row.update({k: v for k, v in overrides.items() if k != "narinfo"})
    row["narinfo"] = overrides.get("narinfo") or (
        f"StorePath: /nix/store/{row['hash']}-{row['name']}\n"
        f"URL: {row['nar_key']}\n"
        f"Compression: {row['compression']}\n"
        f"FileHash: {row['file_hash']}\n"
        f"FileSize: {row['file_size']}\n"
        f"NarHash: {row['nar_hash']}\n"
        f"NarSize: {row['nar_size']}\n"
        "References: \n"
        f"Deriver: {row['deriver']}\n"
        "Sig: test-cache-1:AAAA\n"
    )
    return row


def insert_sql(table: str, row: dict[str, Any]) -> str:
    params = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({params})"


async def insert(conn: Any, table: str, row: dict[str, Any]) -> None:
    await conn.execute(insert_sql(table, row), *row.values())


async def add_object(conn: Any, key: str, kind: str, *, present: bool = True) -> None:
    await conn.execute(
        """INSERT INTO objects (key, kind, state, size, present_at)
           VALUES ($1, $2, $3, $4, CASE WHEN $3 = 'present' THEN now() END)""",
        key,
        kind,
        "present" if present else "pending",
        100 if present else None,
    )


async def add_path(conn: Any, hash_part: str, name: str = "pkg", references: tuple[str, ...] = ()) -> None:
    """Publish a path the way `complete` does: objects first, then the path, then its references."""
    row = store_path_row(hash_part, name)
    await add_object(conn, row["nar_key"], "nar")
    await add_object(conn, row["narinfo_key"], "narinfo")
    await insert(conn, "store_paths", row)
    for reference in references:
        await conn.execute("INSERT INTO path_references (referrer, reference) VALUES ($1, $2)", hash_part, reference)


async def add_session(conn: Any, token: str = "ci", idempotency_key: str | None = None) -> uuid.UUID:
    session_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO upload_sessions (id, idempotency_key, token_name, expires_at, request, request_digest)
           VALUES ($1, $2, $3, now() + interval '1 hour', $4, 'digest')""",
        session_id,
        idempotency_key,
        token,
        {"roots": [], "paths": []},
    )
    return session_id


async def refused(conn: Any, error: type[asyncpg.PostgresError], constraint: str, query: str, *args: Any) -> None:
    with pytest.raises(error) as caught:
        await conn.execute(query, *args)
    assert caught.value.constraint_name == constraint, caught.value


async def count(conn: Any, query: str, *args: Any) -> int:
    return int(await conn.fetchval(query, *args))


# --- a valid closure is accepted ---------------------------------------------------------------------------


async def test_a_consistent_closure_with_files_roots_pins_and_claims_is_accepted(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_path(conn, DEP, "protodep")
        await add_path(conn, TEST, "prototest-1.0", references=(DEP, TEST))
        for key, kind in ((f"{TEST}.ls", "ls"), (f"log/{DRV}", "log"), (REALISATION, "realisation")):
            await add_object(conn, key, kind)
            await conn.execute("INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, $3)", TEST, key, kind)
        await conn.execute("INSERT INTO roots (hash) VALUES ($1)", TEST)
        await conn.execute("INSERT INTO pins (name, hash, created_by) VALUES ('release-1.0_rc.2', $1, 'ci')", TEST)
        session = await add_session(conn, idempotency_key="push-1")
        await add_object(conn, nar_key_for(OTHER), "nar", present=False)
        await conn.execute(
            "INSERT INTO session_claims (session_id, key, upload_id, uploader) VALUES ($1, $2, 'mp-1', true)",
            session,
            nar_key_for(OTHER),
        )
        await conn.execute(
            """INSERT INTO gc_runs (phase, params, dry_run, forced, owner)
               VALUES ('mark', '{"older_than": 86400}', false, false, 'host:1')"""
        )
    assert await count(pool, "SELECT count(*) FROM path_references") == 2
    assert await count(pool, "SELECT count(*) FROM path_files") == 3


# --- garbage is refused ------------------------------------------------------------------------------------
#
# The tables of cases run in one database each (a fresh database per case would cost a second apiece); the
# assertion compares {case: constraint that fired}, so a failure names every case that went wrong.


async def fired(conn: Any, query: str, *args: Any) -> str | None:
    """The name of the constraint that refused the statement, or None if it succeeded."""
    try:
        await conn.execute(query, *args)
    except asyncpg.IntegrityConstraintViolationError as exc:
        return str(exc.constraint_name)
    return None


# case: (key, kind, state, size, present_at set?, file_hash) -> the CHECK that must refuse it
OBJECT_GARBAGE: dict[str, tuple[tuple[Any, ...], str]] = {
    "unknown kind": (("nix-cache-info", "invalid", "pending", None, False, None), "objects_kind_check"),
    "hash part with e": (
        ("e3rplkk2fihip23mj9kdvzxdw7zwh64b.narinfo", "narinfo", "pending", None, False, None),
        "objects_key_matches_kind",
    ),
    "key of another kind": (
        (f"{TEST}.ls", "narinfo", "pending", None, False, None),
        "objects_key_matches_kind",
    ),
    "short nar hash": (
        ("nar/tooshort.nar.zst", "nar", "pending", None, False, None),
        "objects_key_matches_kind",
    ),
    "log of a non-drv": (
        (f"log/{TEST}-prototest-1.0", "log", "pending", None, False, None),
        "objects_key_matches_kind",
    ),
    "traversal": (
        (f"../{TEST}.narinfo", "narinfo", "pending", None, False, None),
        "objects_key_matches_kind",
    ),
    "unknown state": ((f"{TEST}.narinfo", "narinfo", "deleted", None, False, None), "objects_state_check"),
    "negative size": ((f"{TEST}.narinfo", "narinfo", "pending", -1, False, None), "objects_size_check"),
    "present without size": (
        (f"{TEST}.narinfo", "narinfo", "present", None, True, None),
        "objects_present_check",
    ),
    "present without time": (
        (f"{TEST}.narinfo", "narinfo", "present", 10, False, None),
        "objects_present_check",
    ),
    "pending with time": (
        (f"{TEST}.narinfo", "narinfo", "pending", None, True, None),
        "objects_present_check",
    ),
    "md5 file hash": (
        (f"{TEST}.narinfo", "narinfo", "pending", 10, False, "md5:abc"),
        "objects_file_hash_check",
    ),
}


async def test_objects_refuse_garbage(pool: asyncpg.Pool) -> None:
    query = """INSERT INTO objects (key, kind, state, size, present_at, file_hash)
               VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END, $6)"""
    results = {case: await fired(pool, query, *args) for case, (args, _) in OBJECT_GARBAGE.items()}
    assert results == {case: constraint for case, (_, constraint) in OBJECT_GARBAGE.items()}


async def test_only_a_present_build_log_can_be_proven(pool: asyncpg.Pool) -> None:
    query = """INSERT INTO objects (key, kind, state, size, present_at, proven)
               VALUES ($1, $2, $3, $4, CASE WHEN $3 = 'present' THEN now() END, true)"""
    log = f"log/{TEST}-prototest-1.0.drv"
    assert await fired(pool, query, f"{TEST}.narinfo", "narinfo", "present", 10) == "objects_proven_check"
    assert await fired(pool, query, log, "log", "pending", None) == "objects_proven_check"
    assert await fired(pool, query, log, "log", "present", 10) is None
    # Logs are unproven unless said otherwise (what migration 0007 makes of every log before it).
    assert await pool.fetchval("SELECT proven FROM objects WHERE key = $1", log)
    await pool.execute("INSERT INTO objects (key, kind) VALUES ($1, 'log')", f"log/{TEST}-other.drv")
    assert await pool.fetchval("SELECT proven FROM objects WHERE key = $1", f"log/{TEST}-other.drv") is False


async def test_objects_accept_every_key_shape_niks3d_writes(pool: asyncpg.Pool) -> None:
    shapes = {
        f"{TEST}.narinfo": "narinfo",
        f"{TEST}.ls": "ls",
        nar_key_for(TEST): "nar",
        f"nar/{(TEST * 2)[:52]}.nar": "nar",
        f"nar/{(TEST * 2)[:52]}.nar.xz": "nar",
        f"log/{DRV}": "log",
        REALISATION: "realisation",
        f"build-trace-v2/{DRV}/out.doi": "realisation",
    }
    for key, kind in shapes.items():
        await add_object(pool, key, kind)
    rows = await pool.fetch("SELECT key, kind, object_key_kind(key) AS computed FROM objects")
    assert {r["key"]: (r["kind"], r["computed"]) for r in rows} == {k: (v, v) for k, v in shapes.items()}


STORE_PATH_GARBAGE: dict[str, tuple[dict[str, Any], str]] = {
    "hash part of e": ({"hash": "e" * 32}, "store_paths_hash_check"),
    "short hash part": ({"hash": TEST[:31]}, "store_paths_hash_check"),
    "name ..": ({"name": ".."}, "store_paths_name_check"),
    "name with /": ({"name": "a/b"}, "store_paths_name_check"),
    "name too long": ({"name": "x" * 212}, "store_paths_name_check"),
    "empty NAR": ({"nar_size": 0}, "store_paths_nar_size_check"),
    "negative NAR size": ({"nar_size": -5}, "store_paths_nar_size_check"),
    "empty file": ({"file_size": 0}, "store_paths_file_size_check"),
    "hex NarHash": ({"nar_hash": "sha256:" + "0" * 64}, "store_paths_nar_hash_check"),
    "short FileHash": ({"file_hash": "sha256:short"}, "store_paths_file_hash_check"),
    "unknown compression": ({"compression": "rar"}, "store_paths_compression_check"),
    "deriver not a drv": ({"deriver": f"{TEST}-prototest-1.0"}, "store_paths_deriver_check"),
    "deriver without hash": ({"deriver": "prototest.drv"}, "store_paths_deriver_check"),
    "CA without method": ({"ca": "sha256:abc"}, "store_paths_ca_check"),
    "nar_key names a narinfo": ({"nar_key": f"{DEP}.narinfo"}, "store_paths_nar_key_check"),
    "narinfo_key of another path": ({"narinfo_key": f"{DEP}.narinfo"}, "store_paths_narinfo_key_check"),
    "narinfo of another path": (
        {"narinfo": f"StorePath: /nix/store/{DEP}-pkg\n"},
        "store_paths_narinfo_matches_row",
    ),
}


async def test_store_paths_refuse_garbage(pool: asyncpg.Pool) -> None:
    results = {}
    for case, (overrides, _) in STORE_PATH_GARBAGE.items():
        row = store_path_row(TEST, **overrides)
        results[case] = await fired(pool, insert_sql("store_paths", row), *row.values())
    assert results == {case: constraint for case, (_, constraint) in STORE_PATH_GARBAGE.items()}


NARINFO_MANGLES = {
    "URL of another NAR": lambda text: text.replace("URL: nar/", "URL: ../nar/"),  # GC keeps nar_key, not this
    "NarSize": lambda text: text.replace("NarSize: 2072", "NarSize: 2073"),
    "NarHash": lambda text: text.replace("NarHash: sha256:0", "NarHash: sha256:1"),
    "FileSize": lambda text: text.replace("FileSize: 431", "FileSize: 430"),
    "FileHash": lambda text: text.replace("FileHash: sha256:0", "FileHash: sha256:1"),
    "Compression": lambda text: text.replace("Compression: zstd", "Compression: xz"),
    "store dir": lambda text: text.replace("StorePath: /nix/store/", "StorePath: /gnu/store/"),
    "CRLF": lambda text: text.replace("\n", "\r\n"),
    "no final newline": lambda text: text.rstrip("\n"),
}


async def test_a_narinfo_that_does_not_describe_its_row_is_refused(pool: asyncpg.Pool) -> None:
    await add_object(pool, nar_key_for(TEST), "nar")
    await add_object(pool, f"{TEST}.narinfo", "narinfo")
    results = {}
    for case, mangle in NARINFO_MANGLES.items():
        row = store_path_row(TEST)
        row["narinfo"] = mangle(row["narinfo"])
        results[case] = await fired(pool, insert_sql("store_paths", row), *row.values())
    assert results == dict.fromkeys(NARINFO_MANGLES, "store_paths_narinfo_matches_row")
    await insert(pool, "store_paths", store_path_row(TEST))  # the unmangled twin goes in


async def test_a_store_path_needs_its_objects_to_be_tracked(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await insert(pool, "store_paths", store_path_row(TEST))
    assert caught.value.constraint_name in {"store_paths_nar_key_fkey", "store_paths_narinfo_key_fkey"}


async def test_pin_names_are_checked(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    good = ["release-24.05_x", "a", "x" * 128]
    bad = ["-x", ".x", "a/b", "", "x" * 129, "tag with space"]
    query = "INSERT INTO pins (name, hash) VALUES ($1, $2)"
    results = {name: await fired(pool, query, name, TEST) for name in good + bad}
    assert results == {**dict.fromkeys(good), **dict.fromkeys(bad, "pins_name_check")}


async def test_path_files_hold_only_their_own_per_path_files(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    await add_path(pool, DEP)
    await add_object(pool, f"{DEP}.ls", "ls")
    await add_object(pool, f"log/{DRV}", "log")
    query = "INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, $3)"
    await refused(pool, asyncpg.CheckViolationError, "path_files_kind_check", query, TEST, nar_key_for(TEST), "nar")
    await refused(pool, asyncpg.CheckViolationError, "path_files_key_matches_kind", query, TEST, f"log/{DRV}", "ls")
    await refused(pool, asyncpg.CheckViolationError, "path_files_ls_is_own", query, TEST, f"{DEP}.ls", "ls")
    await refused(pool, asyncpg.ForeignKeyViolationError, "path_files_key_fkey", query, TEST, f"{TEST}.ls", "ls")
    await pool.execute(query, DEP, f"{DEP}.ls", "ls")
    await pool.execute(query, TEST, f"log/{DRV}", "log")
    await pool.execute(query, DEP, f"log/{DRV}", "log")  # one build log, several outputs


async def test_upload_sessions_refuse_garbage(pool: asyncpg.Pool) -> None:
    insert_session = """
        INSERT INTO upload_sessions (id, token_name, state, created_at, expires_at, completed_at, request,
                                     request_digest)
        VALUES (gen_random_uuid(), 'ci', $1, now(), now() + $2::text::interval, $3, $4, 'd')"""
    hour = "1 hour"
    check = asyncpg.CheckViolationError
    await refused(pool, check, "upload_sessions_state_check", insert_session, "lost", hour, None, {})
    await refused(pool, check, "upload_sessions_completed_check", insert_session, "completed", hour, None, {})
    await refused(pool, check, "upload_sessions_request_check", insert_session, "open", hour, None, [1, 2])
    await pool.execute(insert_session, "open", hour, None, {"paths": []})


async def test_idempotency_keys_are_unique_per_token(pool: asyncpg.Pool) -> None:
    await add_session(pool, "ci", "key-1")
    await add_session(pool, "laptop", "key-1")  # another token may pick the same key
    await add_session(pool, "ci", None)
    await add_session(pool, "ci", None)
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await add_session(pool, "ci", "key-1")
    assert caught.value.constraint_name == "upload_sessions_idempotency_key_key"


async def test_only_an_uploader_claim_carries_a_multipart_upload_id(pool: asyncpg.Pool) -> None:
    session = await add_session(pool)
    await add_object(pool, nar_key_for(TEST), "nar", present=False)
    query = "INSERT INTO session_claims (session_id, key, upload_id, uploader) VALUES ($1, $2, $3, $4)"
    constraint = "session_claims_upload_id_check"
    await refused(pool, asyncpg.CheckViolationError, constraint, query, session, nar_key_for(TEST), "mp", False)
    await refused(pool, asyncpg.ForeignKeyViolationError, "session_claims_key_fkey", query, session, "x", None, True)
    await pool.execute(query, session, nar_key_for(TEST), "mp", True)


async def test_only_an_uploader_claim_has_a_lease_cap(pool: asyncpg.Pool) -> None:
    session = await add_session(pool)
    await add_object(pool, nar_key_for(TEST), "nar", present=False)
    query = "INSERT INTO session_claims (session_id, key, uploader, lease_cap) VALUES ($1, $2, $3, now())"
    await refused(
        pool, asyncpg.CheckViolationError, "session_claims_lease_cap_check", query, session, nar_key_for(TEST), False
    )
    await pool.execute(query, session, nar_key_for(TEST), True)


async def test_gc_runs_refuse_garbage(pool: asyncpg.Pool) -> None:
    query = """INSERT INTO gc_runs (state, phase, params, bytes_freed, dry_run, forced, finished_at, owner)
               VALUES ($1, 'sweep', '{}', $2, false, false, CASE WHEN $3 THEN now() END, 'host:1')"""
    check = asyncpg.CheckViolationError
    await refused(pool, check, "gc_runs_state_check", query, "done", 0, True)
    await refused(pool, check, "gc_runs_finished_check", query, "finished", 0, False)
    await refused(pool, check, "gc_runs_finished_check", query, "running", 0, True)
    await refused(pool, check, "gc_runs_bytes_freed_check", query, "finished", -1, True)
    await pool.execute(query, "interrupted", 10, True)


# --- references: RESTRICT, CASCADE, self-references, batch deletes -----------------------------------------


async def test_a_reference_to_a_missing_path_is_refused(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    query = "INSERT INTO path_references (referrer, reference) VALUES ($1, $2)"
    await refused(pool, asyncpg.ForeignKeyViolationError, "path_references_reference_fkey", query, TEST, DEP)


async def test_a_referenced_path_is_deleted_only_after_its_referrers(pool: asyncpg.Pool) -> None:
    await add_path(pool, DEP)
    await add_path(pool, TEST, references=(DEP, TEST))
    delete = "DELETE FROM store_paths WHERE hash = $1"

    await refused(pool, asyncpg.ForeignKeyViolationError, "path_references_reference_fkey", delete, DEP)

    await pool.execute(delete, TEST)  # the referrer goes first; its reference rows go with it (CASCADE)
    assert await count(pool, "SELECT count(*) FROM path_references") == 0
    await pool.execute(delete, DEP)
    assert await count(pool, "SELECT count(*) FROM store_paths") == 0


async def test_a_self_referencing_path_can_be_deleted(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST, references=(TEST,))
    await pool.execute("DELETE FROM store_paths WHERE hash = $1", TEST)
    assert await count(pool, "SELECT count(*) FROM path_references") == 0


async def test_a_sweep_may_delete_a_referrer_and_its_reference_in_one_statement(pool: asyncpg.Pool) -> None:
    await add_path(pool, DEP)
    await add_path(pool, TEST, references=(DEP,))
    await add_path(pool, OTHER, references=(DEP,))
    async with pool.acquire() as conn:
        # Deferred, the check still refuses a batch that leaves a referrer (OTHER) behind, at commit ...
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with conn.transaction():
                await conn.execute("SET CONSTRAINTS path_references_reference_fkey DEFERRED")
                await conn.execute("DELETE FROM store_paths WHERE hash = ANY($1)", [DEP, TEST])
        # ... and accepts one that takes every referrer along, whatever the order the rows are visited in.
        async with conn.transaction():
            await conn.execute("SET CONSTRAINTS path_references_reference_fkey DEFERRED")
            await conn.execute("DELETE FROM store_paths WHERE hash = ANY($1)", [DEP, TEST, OTHER])
    assert await count(pool, "SELECT count(*) FROM store_paths") == 0


async def test_deleting_a_pinned_path_is_refused(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    await pool.execute("INSERT INTO pins (name, hash) VALUES ('keep', $1)", TEST)
    delete = "DELETE FROM store_paths WHERE hash = $1"
    await refused(pool, asyncpg.ForeignKeyViolationError, "pins_hash_fkey", delete, TEST)
    await pool.execute("DELETE FROM pins WHERE name = 'keep'")
    await pool.execute(delete, TEST)


async def test_roots_and_files_go_with_their_path_but_shared_objects_stay(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    await add_path(pool, DEP)
    await add_object(pool, f"{TEST}.ls", "ls")
    await add_object(pool, f"log/{DRV}", "log")
    files = "INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, $3)"
    await pool.execute(files, TEST, f"{TEST}.ls", "ls")
    await pool.execute(files, TEST, f"log/{DRV}", "log")
    await pool.execute(files, DEP, f"log/{DRV}", "log")
    await pool.execute("INSERT INTO roots (hash) VALUES ($1)", TEST)

    await pool.execute("DELETE FROM store_paths WHERE hash = $1", TEST)

    assert await count(pool, "SELECT count(*) FROM roots") == 0
    assert [tuple(r) for r in await pool.fetch("SELECT hash, key FROM path_files")] == [(DEP, f"log/{DRV}")]
    assert await count(pool, "SELECT count(*) FROM objects WHERE key = $1", f"{TEST}.ls") == 1  # GC's job


async def test_an_object_in_use_cannot_be_deleted(pool: asyncpg.Pool) -> None:
    await add_path(pool, TEST)
    await add_object(pool, f"{TEST}.ls", "ls")
    await pool.execute("INSERT INTO path_files (hash, key, kind) VALUES ($1, $2, 'ls')", TEST, f"{TEST}.ls")
    session = await add_session(pool)
    await add_object(pool, nar_key_for(DEP), "nar", present=False)
    await pool.execute(
        "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, true)",
        session,
        nar_key_for(DEP),
    )
    delete = "DELETE FROM objects WHERE key = $1"
    fk = asyncpg.ForeignKeyViolationError
    await refused(pool, fk, "store_paths_nar_key_fkey", delete, nar_key_for(TEST))
    await refused(pool, fk, "store_paths_narinfo_key_fkey", delete, f"{TEST}.narinfo")
    await refused(pool, fk, "path_files_key_fkey", delete, f"{TEST}.ls")
    await refused(pool, fk, "session_claims_key_fkey", delete, nar_key_for(DEP))

    await pool.execute("DELETE FROM upload_sessions WHERE id = $1", session)  # claims go with the session
    assert await count(pool, "SELECT count(*) FROM session_claims") == 0
    await pool.execute(delete, nar_key_for(DEP))


# --- GC fencing: the locks documented in 0001_initial.sql and docs/database.md -----------------------------


async def test_a_claim_waits_for_a_sweep_holding_the_object_and_fails_once_it_is_deleted(
    pool: asyncpg.Pool,
) -> None:
    await add_object(pool, nar_key_for(TEST), "nar")
    session = await add_session(pool)
    claim = "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)"
    async with pool.acquire() as gc, pool.acquire() as pusher:
        sweep = gc.transaction()
        await sweep.start()
        await gc.execute("SELECT 1 FROM objects WHERE key = $1 FOR UPDATE", nar_key_for(TEST))
        claiming = asyncio.create_task(pusher.execute(claim, session, nar_key_for(TEST)))
        await asyncio.sleep(0.3)
        assert not claiming.done(), "a claim went through while a sweep held the object row"
        await gc.execute("DELETE FROM objects WHERE key = $1", nar_key_for(TEST))
        await sweep.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await asyncio.wait_for(claiming, 10)


async def test_a_claim_goes_through_once_a_sweep_lets_go_of_a_live_object(pool: asyncpg.Pool) -> None:
    await add_object(pool, nar_key_for(TEST), "nar")
    session = await add_session(pool)
    claim = "INSERT INTO session_claims (session_id, key, uploader) VALUES ($1, $2, false)"
    async with pool.acquire() as gc, pool.acquire() as pusher:
        sweep = gc.transaction()
        await sweep.start()
        await gc.execute("SELECT 1 FROM objects WHERE key = $1 FOR UPDATE", nar_key_for(TEST))
        claiming = asyncio.create_task(pusher.execute(claim, session, nar_key_for(TEST)))
        await asyncio.sleep(0.3)
        assert not claiming.done()
        await sweep.rollback()  # the sweep re-checked and found the key claimed: it keeps the object
        await asyncio.wait_for(claiming, 10)
    assert await count(pool, "SELECT count(*) FROM session_claims") == 1


async def test_publishing_a_referrer_waits_for_a_sweep_of_its_reference(pool: asyncpg.Pool) -> None:
    await add_path(pool, DEP)
    await add_path(pool, TEST)
    reference = "INSERT INTO path_references (referrer, reference) VALUES ($1, $2)"
    async with pool.acquire() as gc, pool.acquire() as pusher:
        sweep = gc.transaction()
        await sweep.start()
        await gc.execute("SELECT 1 FROM store_paths WHERE hash = $1 FOR UPDATE", DEP)
        publishing = asyncio.create_task(pusher.execute(reference, TEST, DEP))
        await asyncio.sleep(0.3)
        assert not publishing.done(), "a reference was recorded while a sweep held the referenced path"
        await gc.execute("DELETE FROM store_paths WHERE hash = $1", DEP)
        await sweep.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await asyncio.wait_for(publishing, 10)


# --- indexes -----------------------------------------------------------------------------------------------


async def unindexed_foreign_keys(pool: asyncpg.Pool) -> tuple[int, list[str]]:
    """The number of foreign keys in the schema, and those whose columns do not lead some index."""
    rows = await pool.fetch(
        """SELECT c.conrelid::regclass::text AS tbl, c.conname,
                  EXISTS (SELECT 1 FROM pg_index i
                          WHERE i.indrelid = c.conrelid
                            AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                            AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey) AS indexed
           FROM pg_constraint c
           WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"""
    )
    return len(rows), sorted(f"{r['tbl']}.{r['conname']}" for r in rows if not r["indexed"])


async def test_every_foreign_key_has_an_index_on_its_columns(pool: asyncpg.Pool) -> None:
    # Without an index on the referencing side, every delete of a referenced row (GC deletes millions) scans
    # the referencing table. An index serves a foreign key if the key's columns lead it, in any order.
    assert await unindexed_foreign_keys(pool) == (15, [])


async def test_the_index_check_notices_a_missing_index(pool: asyncpg.Pool) -> None:
    await pool.execute("DROP INDEX pins_hash_idx")
    await pool.execute("DROP INDEX path_references_reference_idx")
    await pool.execute("CREATE INDEX pins_later ON pins (created_at, hash)")  # hash does not lead it
    assert await unindexed_foreign_keys(pool) == (
        15,
        ["path_references.path_references_reference_fkey", "pins.pins_hash_fkey"],
    )


# --- one placement at a time per key (db/uploads.py; docs/security.md, rule 1) -------------------------------


async def test_sessions_of_two_identities_upload_a_key_but_place_it_one_at_a_time(pool: asyncpg.Pool) -> None:
    key = nar_key_for(TEST)
    lease, bar = timedelta(seconds=30), timedelta(hours=1)
    await add_object(pool, key, "nar", present=False)
    victim, hostile = await add_session(pool, "victim"), await add_session(pool, "hostile")
    claim = "INSERT INTO session_claims (session_id, key, uploader, lease_until) VALUES ($1, $2, true, now() + '1h')"
    await pool.execute(claim, victim, key)
    await pool.execute(claim, hostile, key)  # another identity: an uploader of its own
    assert await pool.fetchval("SELECT token_name FROM session_claims WHERE session_id = $1", hostile) == "hostile"
    again = await add_session(pool, "hostile")
    await refused(pool, asyncpg.UniqueViolationError, "session_claims_one_uploader_idx", claim, again, key)

    async with pool.acquire() as conn:
        assert await uploads.begin_placing(conn, hostile, [key], lease, bar) == {key}
        assert await uploads.begin_placing(conn, victim, [key], lease, bar) == set()
        assert await uploads.placing_obstacles(conn, victim, [key], bar) == {key: "busy"}
        # Only the placer records the NAR; the other's record is refused, even with the placement over.
        assert await uploads.record_accepted(conn, victim, [(key, 100, FILE_HASH)]) == set()
        # The hostile upload fails its check: it stands back while the victim uploads the key.
        assert await uploads.end_placing(conn, hostile, [key]) == {key}
        assert await uploads.end_placing(conn, hostile, [key]) == set()  # a second end deletes nothing
        await uploads.record_failed_check(conn, hostile, [key])
        await conn.execute("DELETE FROM session_claims WHERE session_id = $1", hostile)  # its session aborted
        await conn.execute(claim, again, key)
        assert await uploads.begin_placing(conn, again, [key], lease, bar) == set()
        assert await uploads.placing_obstacles(conn, again, [key], bar) == {key: "barred"}
        assert await uploads.begin_placing(conn, victim, [key], lease, bar) == {key}
        # A placement whose lease ran out (its daemon died) is taken over by the next one.
        await conn.execute("UPDATE objects SET placer_until = now() - interval '1 second' WHERE key = $1", key)
        await conn.execute("DELETE FROM session_claims WHERE session_id = $1", again)
        third = await add_session(conn, "third")
        await conn.execute(claim, third, key)
        assert await uploads.begin_placing(conn, third, [key], lease, bar) == {key}
        assert await uploads.record_accepted(conn, victim, [(key, 100, FILE_HASH)]) == set()
        assert await uploads.record_accepted(conn, third, [(key, 100, FILE_HASH)]) == {key}
        row = await conn.fetchrow("SELECT state, placer, placer_until FROM objects WHERE key = $1", key)
        assert dict(row) == {"state": "present", "placer": None, "placer_until": None}
        assert await uploads.begin_placing(conn, victim, [key], lease, bar) == set()
        assert await uploads.placing_obstacles(conn, victim, [key], bar) == {key: "present"}


async def test_only_a_pending_object_has_a_placer(pool: asyncpg.Pool) -> None:
    await add_object(pool, nar_key_for(TEST), "nar")
    query = "UPDATE objects SET placer = $1, placer_until = now() WHERE key = $2"
    await refused(
        pool, asyncpg.CheckViolationError, "objects_placer_pending_check", query, uuid.uuid4(), nar_key_for(TEST)
    )
    query = "UPDATE objects SET placer = $1, state = 'pending', size = NULL, present_at = NULL WHERE key = $2"
    await refused(pool, asyncpg.CheckViolationError, "objects_placer_check", query, uuid.uuid4(), nar_key_for(TEST))

"""Queries of the push protocol: upload sessions, their claims on bucket keys, and object states.

Locking rules (docs/database.md): a session claims keys inside one transaction that locks the ``objects`` rows
``FOR NO KEY UPDATE`` in key order, so two sessions deciding who uploads a shared object are serialized; GC
locks rows ``FOR UPDATE`` while it deletes them from the bucket, so a claim on a row being swept waits and then
finds the row gone (and the key is uploaded again).
"""

from __future__ import annotations

__all__ = [
    "Claim",
    "SessionRow",
    "StalledUpload",
    "absent_uploads",
    "begin_placing",
    "claims_of_session",
    "clear_idempotency_key",
    "clear_upload_ids",
    "end_placing",
    "ensure_and_lock",
    "ensure_objects",
    "find_session_by_key",
    "insert_claims",
    "insert_session",
    "live_uploaders",
    "load_request",
    "load_session",
    "lock_objects",
    "mark_present",
    "object_states",
    "open_session_ids",
    "path_object_states",
    "placing_obstacles",
    "record_accepted",
    "record_failed_check",
    "record_progress",
    "renew_leases",
    "renew_placing",
    "report_view",
    "set_upload_id",
    "stalled_multipart",
    "take_over",
    "touch_session",
]

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asyncpg import Connection

from niks3d.db.batch import batches
from niks3d.db.retry import Conflict
from niks3d.db.sessions import ReleasedClaim


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: uuid.UUID
    token_name: str
    state: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime
    paths: int  # of its request; the request itself is loaded by load_request, once per daemon (uploads/context.py)
    request_digest: str
    result: dict[str, Any] | None

    def is_expired(self, now: datetime) -> bool:
        return self.state == "expired" or (self.state == "open" and self.expires_at <= now)


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    uploader: bool
    upload_id: str | None


# Without the request (up to tens of MiB of JSON for a large push): every call of a session loads its row.
_SESSION_COLUMNS = (
    "id, token_name, state, created_at, expires_at, last_seen_at,"
    " jsonb_array_length(request->'paths') AS paths, request_digest, result"
)


def _session(row: Any) -> SessionRow:
    return SessionRow(**dict(row))


async def find_session_by_key(conn: Connection, token_name: str, key: str) -> SessionRow | None:
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM upload_sessions WHERE idempotency_key = $1 AND token_name = $2",  # noqa: S608
        key,
        token_name,
    )
    return _session(row) if row else None


async def clear_idempotency_key(conn: Connection, session_id: uuid.UUID) -> None:
    await conn.execute("UPDATE upload_sessions SET idempotency_key = NULL WHERE id = $1", session_id)


async def insert_session(
    conn: Connection,
    *,
    token_name: str,
    idempotency_key: str | None,
    request: str,
    request_digest: str,
    expiry: timedelta,
) -> uuid.UUID:
    """Insert an open session; ``request`` is its request as JSON text (encoded off the event loop)."""
    session_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO upload_sessions
               (id, idempotency_key, token_name, state, created_at, expires_at, last_seen_at, request, request_digest)
           VALUES ($1, $2, $3, 'open', now(), now() + $4::interval, now(), $5::text::jsonb, $6)""",
        session_id,
        idempotency_key,
        token_name,
        expiry,
        request,
        request_digest,
    )
    return session_id


async def load_session(conn: Connection, session_id: uuid.UUID, *, for_update: bool = False) -> SessionRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM upload_sessions WHERE id = $1{lock}",  # noqa: S608 - constants only
        session_id,
    )
    return _session(row) if row else None


async def load_request(conn: Connection, session_id: uuid.UUID) -> str | None:
    """The stored request of a session as JSON text (parsed by the caller, off the event loop)."""
    text: str | None = await conn.fetchval("SELECT request::text FROM upload_sessions WHERE id = $1", session_id)
    return text


async def touch_session(conn: Connection, session_id: uuid.UUID, expiry: timedelta) -> None:
    """Record activity: the session stays live while its client keeps calling."""
    await conn.execute(
        """UPDATE upload_sessions SET last_seen_at = now(),
                  expires_at = greatest(expires_at, now() + $2::interval)
           WHERE id = $1 AND state = 'open'""",
        session_id,
        expiry,
    )


async def ensure_objects(conn: Connection, objects: Iterable[tuple[str, str]]) -> None:
    """Insert ``(key, kind)`` rows as pending unless the key is already known."""
    for pairs in batches(list(objects)):
        await conn.execute(
            """INSERT INTO objects (key, kind, state)
               SELECT k, t, 'pending' FROM unnest($1::text[], $2::text[]) AS u(k, t)
               ON CONFLICT (key) DO NOTHING""",
            [k for k, _ in pairs],
            [t for _, t in pairs],
        )


async def lock_objects(conn: Connection, keys: Sequence[str], *, proven_writer: bool = False) -> dict[str, str]:
    """Lock the rows of ``keys`` in key order (serializing sessions that share objects); key -> state.

    ``proven_writer``: the caller's logs come with their proof, so a log present without one is ``pending``."""
    states: dict[str, str] = {}
    for batch in batches(sorted(keys)):  # batches in key order: the locks are still taken in key order
        rows = await conn.fetch(
            # To a writer that brings the proof, a build log present without one is still to be uploaded: its
            # upload replaces the unproven one (docs/security.md, rule 3; niks3d/db/logs.py).
            """SELECT key, CASE WHEN $2 AND kind = 'log' AND state = 'present' AND NOT proven
                                THEN 'pending' ELSE state END AS state
               FROM objects WHERE key = ANY($1::text[]) ORDER BY key FOR NO KEY UPDATE""",
            list(batch),
            proven_writer,
        )
        states.update((r["key"], r["state"]) for r in rows)
    return states


async def ensure_and_lock(
    conn: Connection, objects: Sequence[tuple[str, str]], *, also: Sequence[str] = (), proven_writer: bool = False
) -> dict[str, str]:
    """:func:`ensure_objects` of ``objects`` and :func:`lock_objects` of their keys and of ``also`` (keys that are
    locked if they exist, never inserted), in one statement a batch; key -> state of the rows locked.

    The rows it inserts come first (the UNION ALL runs in order), then the others are locked in key order: the
    order of the two statements this replaces. The lock sees the rows of the statement's snapshot, so a row that
    another transaction inserted while this one waited for it (ON CONFLICT) is not locked here: then, as when a
    GC sweep deleted a row between the two, it raises :class:`~niks3d.db.retry.Conflict`, and the caller's
    transaction runs again and sees the row.
    """
    kinds = dict(objects)
    states: dict[str, str] = {}
    # in key order, as lock_objects (``objects`` usually come in key order: then the sort is one pass, a few ms on
    # the event loop for 100,000 keys)
    for batch in batches(sorted(kinds.keys() | set(also)) if also else sorted(kinds)):
        ensured = [k for k in batch if k in kinds]
        rows = await conn.fetch(
            """WITH inserted AS (
                   INSERT INTO objects (key, kind, state)
                   SELECT k, t, 'pending' FROM unnest($1::text[], $2::text[]) AS u(k, t) ORDER BY k
                   ON CONFLICT (key) DO NOTHING
                   RETURNING key, state)
               SELECT key, state FROM inserted
               UNION ALL
               SELECT key, state FROM (
                   SELECT key, CASE WHEN $4 AND kind = 'log' AND state = 'present' AND NOT proven
                                    THEN 'pending' ELSE state END AS state
                   FROM objects WHERE key = ANY($3::text[]) ORDER BY key FOR NO KEY UPDATE) AS locked""",
            ensured,
            [kinds[k] for k in ensured],
            list(batch),
            proven_writer,
        )
        states.update((r["key"], r["state"]) for r in rows)
        if any(k not in states for k in ensured):
            raise Conflict
    return states


async def object_states(
    conn: Connection, keys: Sequence[str], *, proven_writer: bool = False
) -> dict[str, tuple[str, int | None, str | None]]:
    """key -> (state, size, file_hash) for the keys that exist; ``proven_writer`` as for :func:`lock_objects`."""
    states: dict[str, tuple[str, int | None, str | None]] = {}
    for batch in batches(list(keys)):
        rows = await conn.fetch(
            """SELECT key, CASE WHEN $2 AND kind = 'log' AND state = 'present' AND NOT proven
                                THEN 'pending' ELSE state END AS state, size, file_hash
               FROM objects WHERE key = ANY($1::text[])""",
            list(batch),
            proven_writer,
        )
        states.update((r["key"], (r["state"], r["size"], r["file_hash"])) for r in rows)
    return states


async def report_view(
    conn: Connection, session_id: uuid.UUID, keys: Sequence[str], expiry: timedelta
) -> dict[str, tuple[Claim, str]]:
    """What a report needs to know of its objects, in one statement: key -> (the session's claim, the object's
    state as a writer with proofs sees it: :func:`lock_objects`), for the keys the session claims; and the session
    touched (:func:`touch_session`), since its client is calling."""
    rows = await conn.fetch(
        """WITH touched AS (
               UPDATE upload_sessions SET last_seen_at = now(),
                      expires_at = greatest(expires_at, now() + $3::interval)
               WHERE id = $1 AND state = 'open')
           SELECT c.key, c.uploader, c.upload_id,
                  CASE WHEN o.kind = 'log' AND o.state = 'present' AND NOT o.proven THEN 'pending'
                       ELSE coalesce(o.state, 'pending') END AS state
           FROM session_claims c LEFT JOIN objects o ON o.key = c.key
           WHERE c.session_id = $1 AND c.key = ANY($2::text[])""",
        session_id,
        list(keys),
        expiry,
    )
    return {r["key"]: (Claim(r["key"], r["uploader"], r["upload_id"]), r["state"]) for r in rows}


async def absent_uploads(conn: Connection, wanted: Sequence[tuple[str, str]]) -> set[str]:
    """Of ``(path hash, key)`` pairs, the keys that a path not published yet needs and that are not present (as a
    writer with proofs sees them: :func:`lock_objects`), in one statement a batch."""
    absent: set[str] = set()
    for batch in batches(list(wanted)):
        rows = await conn.fetch(
            """SELECT DISTINCT x.key FROM unnest($1::text[], $2::text[]) AS x(hash, key)
               LEFT JOIN objects o ON o.key = x.key
               WHERE NOT EXISTS (SELECT 1 FROM store_paths p WHERE p.hash = x.hash)
                 AND NOT coalesce(o.state = 'present' AND (o.kind <> 'log' OR o.proven), false)""",
            [h for h, _ in batch],
            [k for _, k in batch],
        )
        absent.update(r["key"] for r in rows)
    return absent


async def path_object_states(
    conn: Connection, wanted: Sequence[tuple[str, str]], *, proven_writer: bool = False
) -> tuple[set[str], dict[str, tuple[str, int | None, str | None]]]:
    """Of ``(path hash, key)`` pairs: the path hashes that are published, and key -> (state, size, file_hash) of
    the keys that exist (``proven_writer`` as for :func:`lock_objects`); one statement a batch, where
    ``published_hashes`` and :func:`object_states` were two."""
    published: set[str] = set()
    states: dict[str, tuple[str, int | None, str | None]] = {}
    for batch in batches(list(wanted)):
        rows = await conn.fetch(
            """SELECT x.hash, p.hash IS NOT NULL AS published, o.key,
                      CASE WHEN $3 AND o.kind = 'log' AND o.state = 'present' AND NOT o.proven
                           THEN 'pending' ELSE o.state END AS state, o.size, o.file_hash
               FROM unnest($1::text[], $2::text[]) AS x(hash, key)
               LEFT JOIN store_paths p ON p.hash = x.hash
               LEFT JOIN objects o ON o.key = x.key""",
            [h for h, _ in batch],
            [k for _, k in batch],
            proven_writer,
        )
        published.update(r["hash"] for r in rows if r["published"])
        states.update((r["key"], (r["state"], r["size"], r["file_hash"])) for r in rows if r["key"] is not None)
    return published, states


async def live_uploaders(
    conn: Connection, keys: Sequence[str], *, exclude: uuid.UUID, token_name: str
) -> dict[str, uuid.UUID]:
    """For each key, the session another one of ``token_name`` must wait for, if any: another open session of
    the same identity whose lease on uploading it has not run out, or another session whose upload of it niks3d
    is putting in place right now (:func:`begin_placing`). Sessions of other identities upload side by side and
    hold nobody up (docs/security.md, rule 1)."""
    busy: dict[str, uuid.UUID] = {}
    for batch in batches(list(keys)):
        rows = await conn.fetch(
            """SELECT c.key, c.session_id FROM session_claims c JOIN upload_sessions s ON s.id = c.session_id
               WHERE c.key = ANY($1::text[]) AND c.uploader AND c.session_id <> $2 AND c.token_name = $3
                 AND s.state = 'open' AND s.expires_at > now() AND c.lease_until > now()
               UNION ALL
               SELECT key, placer FROM objects
               WHERE key = ANY($1::text[]) AND placer <> $2 AND placer_until > now()""",
            list(batch),
            exclude,
            token_name,
        )
        busy.update((r["key"], r["session_id"]) for r in rows)
    return busy


@dataclass(frozen=True, slots=True)
class StalledUpload:
    """Another session's multipart upload of a key whose lease ran out, and the bytes it had at its last renewal."""

    session_id: uuid.UUID
    key: str
    upload_id: str
    progress: int


async def stalled_multipart(
    conn: Connection, keys: Sequence[str], *, exclude: uuid.UUID, token_name: str
) -> list[StalledUpload]:
    """The multipart uploads of ``keys`` by other sessions of ``token_name`` whose lease ran out (only the same
    identity's uploads can be taken over: :func:`take_over`)."""
    rows: list[Any] = []
    for batch in batches(list(keys)):
        rows += await conn.fetch(
            """SELECT c.session_id, c.key, c.upload_id, c.progress FROM session_claims c
               WHERE c.key = ANY($1::text[]) AND c.uploader AND c.session_id <> $2 AND c.token_name = $3
                 AND c.upload_id IS NOT NULL AND c.lease_until <= now()""",
            list(batch),
            exclude,
            token_name,
        )
    return [StalledUpload(r["session_id"], r["key"], r["upload_id"], r["progress"]) for r in rows]


async def record_progress(conn: Connection, upload: StalledUpload, progress: int, lease: timedelta) -> bool:
    """Renew the lease of a multipart upload that has more bytes than at its last renewal (still the same upload)."""
    done = await conn.execute(
        """UPDATE session_claims SET lease_until = least(now() + $5::interval, lease_cap), progress = $4
           WHERE session_id = $1 AND key = $2 AND upload_id = $3 AND uploader AND progress < $4
             AND (lease_cap IS NULL OR lease_cap > now())""",
        upload.session_id,
        upload.key,
        upload.upload_id,
        progress,
        lease,
    )
    return bool(done != "UPDATE 0")


async def renew_leases(conn: Connection, session_id: uuid.UUID, lease: timedelta, keys: Sequence[str] = ()) -> set[str]:
    """Upload progress: renew the leases of every upload of the session, in one statement; returns the keys of
    ``keys`` it still uploads (another session may have taken some over).

    The rows of ``keys`` are locked first, in key order, waiting for a transaction that holds one (to say for
    sure which of them the session still uploads); the session's other rows are renewed skipping the rows another
    transaction holds: such a renewal never waits, so it never takes part in a deadlock (that transaction is a
    report or a publication of the same session, progress itself), and a renewal missed is made up by the next.
    ``named`` comes before ``others`` in the UNION ALL, which PostgreSQL runs in order: this statement holds no
    lock of the others while it waits for one of ``keys``.
    """
    rows = await conn.fetch(
        """WITH named AS (
               SELECT key FROM session_claims
               WHERE session_id = $1 AND uploader AND key = ANY($3::text[])
               ORDER BY key FOR NO KEY UPDATE),
           others AS (
               SELECT key FROM session_claims
               WHERE session_id = $1 AND uploader AND key <> ALL($3::text[])
               ORDER BY key FOR NO KEY UPDATE SKIP LOCKED)
           UPDATE session_claims c SET lease_until = least(now() + $2::interval, c.lease_cap)
           FROM (SELECT key FROM named UNION ALL SELECT key FROM others) AS mine
           WHERE c.session_id = $1 AND c.key = mine.key
           RETURNING c.key""",
        session_id,
        lease,
        list(keys),
    )
    named = set(keys)
    return {r["key"] for r in rows if r["key"] in named}


async def insert_claims(conn: Connection, session_id: uuid.UUID, claims: Iterable[tuple[str, bool]]) -> None:
    """Claim ``(key, uploader)`` pairs for a session (idempotent)."""
    for pairs in batches(list(claims)):
        await conn.execute(
            """INSERT INTO session_claims (session_id, key, uploader)
               SELECT $1, k, u FROM unnest($2::text[], $3::bool[]) AS x(k, u)
               ON CONFLICT (session_id, key) DO NOTHING""",
            session_id,
            [k for k, _ in pairs],
            [u for _, u in pairs],
        )


async def take_over(
    conn: Connection, session_id: uuid.UUID, keys: Sequence[str], lease: timedelta, max_lease: timedelta
) -> list[ReleasedClaim]:
    """Make ``session_id`` the uploader of ``keys`` (the previous uploader of its identity, if any, let its lease
    run out; another identity's uploader keeps its upload: each identity uploads on its own), with a fresh lease
    that no renewal moves past the identity's cap on the key: ``max_lease`` from the first time that identity
    became its uploader (``claim_caps``; docs/security.md, rule 1), already past for an identity that used it up.
    Returns the previous uploaders' claims as released ones, whose multipart uploads the caller aborts
    (uploads/closing.py)."""
    # The previous uploader keeps its claim as a waiting one: its late report of the key is then accepted once
    # the key is present, and its session still protects the key from GC.
    dropped: list[Any] = []
    for batch in batches(sorted(keys)):
        dropped += await conn.fetch(
            """WITH old AS (SELECT session_id, key, upload_id FROM session_claims
                            WHERE key = ANY($1::text[]) AND uploader AND session_id <> $2
                              AND token_name = (SELECT token_name FROM upload_sessions WHERE id = $2)
                            FOR UPDATE)
               UPDATE session_claims c
               SET uploader = false, upload_id = NULL, lease_until = NULL, lease_cap = NULL, progress = 0
               FROM old WHERE c.session_id = old.session_id AND c.key = old.key
               RETURNING old.session_id, old.key, old.upload_id""",
            list(batch),
            session_id,
        )
        # The cap is the identity's for the key (claim_caps): set the first time it uploads the key, inherited by
        # every later session of the same identity, so a second session cannot start the clock again.
        await conn.execute(
            """WITH caps AS (
                   INSERT INTO claim_caps (key, token_name, lease_cap)
                   SELECT k, s.token_name, now() + $4::interval
                   FROM unnest($2::text[]) AS k, upload_sessions s WHERE s.id = $1
                   ON CONFLICT (key, token_name) DO UPDATE SET lease_cap = claim_caps.lease_cap
                   RETURNING key, lease_cap)
               UPDATE session_claims c
               SET uploader = true, lease_until = least(now() + $3::interval, caps.lease_cap),
                   lease_cap = caps.lease_cap, progress = 0
               FROM caps WHERE c.session_id = $1 AND c.key = caps.key""",
            session_id,
            list(batch),
            lease,
            max_lease,
        )
    return [ReleasedClaim(r["session_id"], r["key"], r["upload_id"], True) for r in dropped]


async def claims_of_session(
    conn: Connection, session_id: uuid.UUID, keys: Sequence[str] | None = None
) -> dict[str, Claim]:
    """The session's claims (all of them, or those of ``keys``)."""
    if keys is None:
        rows = await conn.fetch("SELECT key, uploader, upload_id FROM session_claims WHERE session_id = $1", session_id)
    else:
        rows = await conn.fetch(
            """SELECT key, uploader, upload_id FROM session_claims
               WHERE session_id = $1 AND key = ANY($2::text[])""",
            session_id,
            list(keys),
        )
    return {r["key"]: Claim(r["key"], r["uploader"], r["upload_id"]) for r in rows}


async def set_upload_id(conn: Connection, session_id: uuid.UUID, key: str, upload_id: str | None) -> None:
    await conn.execute(
        "UPDATE session_claims SET upload_id = $3 WHERE session_id = $1 AND key = $2",
        session_id,
        key,
        upload_id,
    )


async def clear_upload_ids(conn: Connection, session_id: uuid.UUID, keys: Sequence[str]) -> None:
    """Forget the multipart upload ids of ``keys`` in this session's claims, in one statement."""
    await conn.execute(
        "UPDATE session_claims SET upload_id = NULL WHERE session_id = $1 AND key = ANY($2::text[])",
        session_id,
        list(keys),
    )


async def mark_present(conn: Connection, entries: Iterable[tuple[str, int, str | None]]) -> None:
    """Record ``(key, size, file_hash)`` objects as present in the bucket."""
    rows = list(entries)
    await conn.execute(
        """UPDATE objects o SET state = 'present', size = x.size, file_hash = x.file_hash,
                  present_at = coalesce(o.present_at, now())
           FROM unnest($1::text[], $2::bigint[], $3::text[]) AS x(key, size, file_hash)
           WHERE o.key = x.key""",
        [k for k, _, _ in rows],
        [s for _, s, _ in rows],
        [h for _, _, h in rows],
    )


async def record_accepted(
    conn: Connection, session_id: uuid.UUID, entries: Sequence[tuple[str, int, str | None]]
) -> set[str]:
    """After a report: record the accepted ``(key, size, file_hash)`` objects as present (:func:`mark_present`)
    and forget their multipart upload ids in the session's claims (their uploads are finished), in one statement.

    Reports of one session (a retry, or one through another daemon) record in turn: ``s`` locks the session's
    row, and both updates join it, so neither locks an object or claim row before the session's row is held.
    Without that, two of them lock the same object and claim rows in different orders and deadlock. The claims
    are updated for the objects updated (``present``), so an object's row is locked before its claim's, as
    publication and take-overs lock them. The leases are not renewed here: the report renewed every lease of the
    session when it found the staged objects (:func:`renew_leases`), and kept them renewed while it checked them
    (uploads/leases.py).

    A NAR is recorded only while this session is its placer (:func:`begin_placing`), and its placement ends
    with it: the condition is checked on the object's row as it is once locked, so no other placement can have
    begun in between. Returns the keys recorded; a key left out is not this session's upload any more.
    """
    rows = list(entries)
    recorded = await conn.fetch(
        """WITH s AS (SELECT id FROM upload_sessions WHERE id = $1 FOR UPDATE),
           present AS (
               UPDATE objects o SET state = 'present', size = x.size, file_hash = x.file_hash,
                      present_at = coalesce(o.present_at, now()), placer = NULL, placer_until = NULL
               FROM unnest($2::text[], $3::bigint[], $4::text[]) AS x(key, size, file_hash), s
               WHERE o.key = x.key AND (o.kind <> 'nar' OR o.placer = $1)
               RETURNING o.key),
           claims AS (
               UPDATE session_claims c SET upload_id = NULL
               FROM present, s WHERE c.session_id = s.id AND c.key = present.key)
           SELECT key FROM present""",
        session_id,
        [k for k, _, _ in rows],
        [z for _, z, _ in rows],
        [h for _, _, h in rows],
    )
    return {r["key"] for r in recorded}


# Whether the identity of session {session} may not place ``o.key`` now: its upload of the key failed its check
# less than {bar} ago, and a session of another identity is uploading the key (a barred identity does not hold
# others up twice; alone, it may try again).
_BARRED = """(EXISTS (SELECT 1 FROM claim_caps f JOIN upload_sessions s ON s.token_name = f.token_name
                      WHERE s.id = {session} AND f.key = o.key AND f.failed_at > now() - {bar}::interval)
             AND EXISTS (SELECT 1 FROM session_claims c JOIN upload_sessions s ON s.id = c.session_id
                         WHERE c.key = o.key AND c.uploader AND s.state = 'open' AND c.lease_until > now()
                           AND c.token_name <> (SELECT token_name FROM upload_sessions WHERE id = {session})))"""


async def begin_placing(
    conn: Connection, session_id: uuid.UUID, keys: Sequence[str], lease: timedelta, bar: timedelta
) -> set[str]:
    """Make ``session_id`` the placer of those of ``keys`` (NARs) it may put in place now, for ``lease``; returns
    them. A key is placed by one session at a time (docs/security.md, rule 1): only a pending object the session
    uploads, with no other live placement, and not by an identity whose upload of it failed its check less than
    ``bar`` ago (``claim_caps.failed_at``) while another identity uploads it (:data:`_BARRED`). The conditions on
    the object's row are checked on the row as it is once locked (a placement that began meanwhile is seen), so
    two sessions never both place a key."""
    rows = await conn.fetch(
        f"""UPDATE objects o SET placer = $1, placer_until = now() + $3::interval
           FROM (SELECT key FROM session_claims
                 WHERE session_id = $1 AND uploader AND key = ANY($2::text[])) AS mine
           WHERE o.key = mine.key AND o.state = 'pending'
             AND (o.placer IS NULL OR o.placer = $1 OR o.placer_until <= now())
             AND NOT ({_BARRED.format(session="$1", bar="$4")})
           RETURNING o.key""",  # noqa: S608 - constants only
        session_id,
        sorted(keys),
        lease,
        bar,
    )
    return {r["key"] for r in rows}


async def placing_obstacles(
    conn: Connection, session_id: uuid.UUID, keys: Sequence[str], bar: timedelta
) -> dict[str, str]:
    """Why :func:`begin_placing` did not give ``keys`` to the session: key -> ``present`` (another upload was put
    in place first), ``barred`` (this identity's upload of it failed its check) or ``busy`` (another placement
    is live, or the session is not its uploader any more)."""
    rows = await conn.fetch(
        f"""SELECT o.key, CASE
                      WHEN o.state = 'present' THEN 'present'
                      WHEN {_BARRED.format(session="$1", bar="$3")} THEN 'barred'
                      ELSE 'busy' END AS why
           FROM objects o WHERE o.key = ANY($2::text[])""",  # noqa: S608 - constants only
        session_id,
        list(keys),
        bar,
    )
    return {r["key"]: r["why"] for r in rows}


async def end_placing(conn: Connection, session_id: uuid.UUID, keys: Sequence[str] | None = None) -> set[str]:
    """End the session's placements (of ``keys``, or all of them) without recording the objects; returns the keys
    it still placed. Inside a transaction, the rows stay locked until it ends: what the caller deletes from the
    bucket meanwhile is still this session's copy, which no other placement has replaced."""
    rows = await conn.fetch(
        """UPDATE objects SET placer = NULL, placer_until = NULL
           WHERE placer = $1 AND ($2::text[] IS NULL OR key = ANY($2::text[]))
           RETURNING key""",
        session_id,
        None if keys is None else list(keys),
    )
    return {r["key"] for r in rows}


async def renew_placing(conn: Connection, session_id: uuid.UUID, lease: timedelta) -> None:
    """Renew the session's placements while it copies and checks them; a row another transaction holds is
    skipped (renewed at the next tick), so the renewal never waits."""
    await conn.execute(
        """UPDATE objects SET placer_until = now() + $2::interval
           WHERE key IN (SELECT key FROM objects WHERE placer = $1 FOR NO KEY UPDATE SKIP LOCKED)""",
        session_id,
        lease,
    )


async def record_failed_check(conn: Connection, session_id: uuid.UUID, keys: Sequence[str]) -> None:
    """The session's uploads of ``keys`` failed their check: its identity does not place them again for a while
    (:func:`begin_placing`)."""
    await conn.execute(
        """INSERT INTO claim_caps (key, token_name, lease_cap, failed_at)
           SELECT k, s.token_name, now(), now() FROM unnest($2::text[]) AS k, upload_sessions s
           WHERE s.id = $1 AND EXISTS (SELECT 1 FROM objects o WHERE o.key = k)
           ON CONFLICT (key, token_name) DO UPDATE SET failed_at = now()""",
        session_id,
        list(keys),
    )


async def open_session_ids(conn: Connection, session_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The sessions among ``session_ids`` that are open (their staging objects are still needed)."""
    rows = await conn.fetch(
        "SELECT id FROM upload_sessions WHERE id = ANY($1::uuid[]) AND state = 'open'", list(session_ids)
    )
    return {r["id"] for r in rows}

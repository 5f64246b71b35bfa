"""The state of a mirror sync: one DuckDB file holding the last synced snapshot (ID, digest).

Blocking code only: every method runs in the sync's own worker thread (``_sync`` awaits them
one at a time), so the event loop never waits on DuckDB. Layout of the state file::

    batch_audience_sync   one row: schema version, audience, API generation, salt and target
                          fingerprint (a salted hash of server and project/app key, never a
                          key), whether a snapshot exists, whether the next sync must be full,
                          the sync in progress (started, not finished), the last finished sync
    snapshot (id, digest) the source as of the last sync whose every request was acknowledged
    dirty (id)            IDs an unfinished sync may have touched: their state on the server
                          is unknown, so the next sync resends them whatever their digest

The working tables of one run (the source as read, its deduplicated form, the plan) live in an
in-memory database that spills to ``<state>.tmp/`` past the memory limit; the state file is
ATTACHed to it (read-only for a dry run), so a run that dies leaves nothing behind in it, and
the state changes only in two short transactions: "started" (with the plan's IDs as dirty)
and "finished" (the new snapshot). A second sync of one state is refused by an flock on
``<state>.lock`` (which, unlike DuckDB's own lock, also holds between two syncs of one process).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import secrets
import stat
from collections.abc import Generator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import orjson

from ._exceptions import ValidationError

try:  # POSIX: one sync at a time per state.
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the lock is then skipped
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DATA_INSTALL",
    "DEFAULT_MEMORY_LIMIT",
    "Plan",
    "SyncState",
    "SyncStateError",
    "import_data",
]

SCHEMA_VERSION: Final = 1
DATA_INSTALL: Final = "pip install 'batch-audience[data]'"
DEFAULT_MEMORY_LIMIT: Final = "512MB"  # DuckDB's working memory; past it, it spills to disk
DEFAULT_THREADS: Final = 2  # DuckDB worker threads
EXAMPLES: Final = 5  # example IDs of each kind in a plan
_META: Final = "batch_audience_sync"

# Plan kinds, stored as small integers.
ADDED: Final = 1
CHANGED: Final = 2
REMOVED: Final = 3
KINDS: Final = {ADDED: "added", CHANGED: "changed", REMOVED: "removed"}
# Past this share of the snapshot, the new snapshot is written whole instead of patched.
_REWRITE_SHARE: Final = 0.2


class SyncStateError(ValidationError):
    """The sync state cannot be used: another audience or project, damaged, or in use."""

    def __reduce__(self) -> Any:
        return (type(self), (self.rule,))


class SyncDriftError(SyncStateError):
    """The audience no longer matches the last sync's snapshot: it was changed elsewhere."""


def import_data() -> tuple[Any, Any]:
    """duckdb and pyarrow, or an ImportError naming the extra to install."""
    try:
        duckdb = importlib.import_module("duckdb")
        pyarrow = importlib.import_module("pyarrow")
    except ImportError as exc:
        raise ImportError(
            f"mirror sync needs DuckDB and pyarrow: {DATA_INSTALL} ({exc.name} is missing)"
        ) from None
    return duckdb, pyarrow


def target_fingerprint(salt: str, generation: str, base_url: str, key: str) -> str:
    """A salted one-way fingerprint of where a client writes (server, generation, key)."""
    text = "\0".join(("batch_audience.sync", salt, generation, base_url, key))
    # 16 hex characters tell targets apart; salted, they cannot even be matched across files.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.frozen(kw_only=True)
class Identity:
    """What a state belongs to; the key only ever enters ``target_fingerprint``."""

    audience: str
    generation: str
    base_url: str = attrs.field(repr=False)
    key: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Meta:
    """The state's one meta row, as read at open."""

    synced: bool  # a snapshot exists (the first sync finished)
    needs_full: bool  # a full sync started and did not finish
    unfinished: bool  # a sync started and did not finish
    snapshot_count: int
    finished: datetime | None


@attrs.frozen(kw_only=True)
class Plan:
    """What a sync would send: counts per kind, a few example IDs of each."""

    records: int  # distinct IDs in the source
    rows: int  # records read, duplicates included
    added: int
    changed: int
    removed: int
    examples: dict[str, tuple[str, ...]]

    @property
    def duplicates(self) -> int:
        """Records whose ID occurs again later in the source (the last occurrence wins)."""
        return self.rows - self.records

    @property
    def unchanged(self) -> int:
        """IDs of the source that need no request."""
        return self.records - self.added - self.changed


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SyncState:
    """An open state file plus the working tables of one sync run; see the module docstring.

    Not thread-safe: one thread at a time (the sync's worker) calls its methods.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: Identity,
        *,
        read_only: bool = False,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        duckdb, self._pa = import_data()
        self.path = os.fspath(path)
        self.identity = identity
        self.read_only = read_only
        self._lock_fd = -1
        self._con: Any = None
        self._rows = 0
        self._fresh = "staging"  # the deduplicated source (id, digest, pos), set by plan()
        self._planned = 0  # rows of the plan
        self.full = False
        exists = os.path.exists(self.path)
        if exists and not stat.S_ISREG(os.stat(self.path).st_mode):
            raise SyncStateError(f"sync state {self.path!r} is not a regular file")
        # A dry run with no state yet must not create one, nor its lock.
        self.attached = exists or not read_only
        try:
            if self.attached:
                self._lock()
            self._con = duckdb.connect(
                ":memory:",
                config={
                    "memory_limit": memory_limit,
                    "threads": threads,
                    "temp_directory": self.path + ".tmp",
                    "preserve_insertion_order": False,
                },
            )
            if self.attached:
                self._attach(duckdb)
            self.meta = self._load()
            self._con.execute("CREATE TABLE staging (pos BIGINT, id VARCHAR, h UBIGINT, wire BLOB)")
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _lock(self) -> None:
        try:
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SyncStateError(
                f"cannot open the lock of sync state {self.path!r}: {exc.strerror or exc}"
            ) from None
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncStateError(
                f"sync state {self.path!r} is in use by another sync right now; "
                "wait for it to finish"
            ) from None

    def _attach(self, duckdb: Any) -> None:
        assert self._con is not None
        mode = " (READ_ONLY)" if self.read_only else ""
        try:
            self._con.execute(f"ATTACH {_literal(self.path)} AS st{mode}")
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise SyncStateError(
                    f"sync state {self.path!r} is open in another program right now"
                ) from None
            if "not a valid duckdb" in text.lower():
                raise SyncStateError(
                    f"{self.path!r} is not a batch_audience sync state (a DuckDB database)"
                ) from None
            raise SyncStateError(f"sync state {self.path!r} cannot be opened: {text}") from None
        except duckdb.Error as exc:
            raise SyncStateError(
                f"{self.path!r} is not a batch_audience sync state (a DuckDB database): {exc}"
            ) from None

    def _load(self) -> Meta:
        assert self._con is not None
        con = self._con
        if not self.attached:
            return Meta(
                synced=False, needs_full=False, unfinished=False, snapshot_count=0, finished=None
            )
        tables = {row[0] for row in con.execute("SHOW TABLES FROM st").fetchall()}
        if not tables:
            if self.read_only:  # pragma: no cover - an empty file is made only by a crash
                return Meta(
                    synced=False,
                    needs_full=False,
                    unfinished=False,
                    snapshot_count=0,
                    finished=None,
                )
            self._create()
        elif _META not in tables:
            raise SyncStateError(
                f"{self.path!r} is a DuckDB database, but not a batch_audience sync state"
            )
        row = con.execute(
            f"SELECT schema, audience, generation, salt, target, synced, needs_full, "
            f"in_progress, snapshot_count, finished FROM st.{_META}"
        ).fetchall()
        if len(row) != 1:
            raise SyncStateError(f"sync state {self.path!r} is damaged (no meta row)")
        (schema, audience, generation, salt, target, synced, full, busy, count, finished) = row[0]
        if schema != SCHEMA_VERSION:
            raise SyncStateError(
                f"sync state {self.path!r} has schema {schema}, this version reads "
                f"{SCHEMA_VERSION}: delete it (the next sync is then a full one)"
            )
        ident = self.identity
        wanted = target_fingerprint(salt, ident.generation, ident.base_url, ident.key)
        if audience != ident.audience or generation != ident.generation or target != wanted:
            why = []
            if audience != ident.audience:
                why.append(f"it is the state of audience {audience!r}, not {ident.audience!r}")
            if generation != ident.generation:
                why.append(f"it was made with API {generation}, not {ident.generation}")
            if target != wanted and generation == ident.generation:
                why.append("it was made for another server, project or app")
            raise SyncStateError(
                f"sync state {self.path!r} belongs to another audience: {'; '.join(why)}. "
                "Use one state file per audience and project"
            )
        return Meta(
            synced=bool(synced),
            needs_full=bool(full),
            unfinished=bool(busy),
            snapshot_count=int(count),
            finished=finished,
        )

    def _create(self) -> None:
        assert self._con is not None
        ident = self.identity
        salt = secrets.token_hex(8)
        target = target_fingerprint(salt, ident.generation, ident.base_url, ident.key)
        con = self._con
        con.execute("BEGIN")
        con.execute(
            f"CREATE TABLE st.{_META} (schema INTEGER, audience VARCHAR, generation VARCHAR, "
            "salt VARCHAR, target VARCHAR, synced BOOLEAN, needs_full BOOLEAN, "
            "in_progress BOOLEAN, snapshot_count BIGINT, started TIMESTAMP, finished TIMESTAMP)"
        )
        con.execute(
            f"INSERT INTO st.{_META} VALUES (?, ?, ?, ?, ?, false, false, false, 0, NULL, NULL)",
            [SCHEMA_VERSION, ident.audience, ident.generation, salt, target],
        )
        con.execute("CREATE TABLE st.snapshot (id VARCHAR, digest UBIGINT)")
        con.execute("CREATE TABLE st.dirty (id VARCHAR)")
        con.execute("COMMIT")

    # -- staging the source ----------------------------------------------------------------

    def append(self, ids: Sequence[str], wires: Sequence[bytes]) -> None:
        """Stage records read from the source, in source order: IDs and add-wire entries."""
        assert self._con is not None
        pa = self._pa
        count = len(ids)
        batch = pa.table(
            {
                "pos": pa.array(range(self._rows, self._rows + count), pa.int64()),
                "id": pa.array(ids, pa.string()),
                "wire": pa.array(wires, pa.binary()),
            }
        )
        self.append_arrow(batch)

    def append_entries(self, body: bytes | memoryview) -> None:
        """Stage a chunk's JSON array of add-wire entries (a columnar source's chunk)."""
        entries = orjson.loads(body)
        # Dumped again one by one: the same bytes for the same entry, whichever encoder
        # (orjson, DuckDB's to_json) wrote the chunk, so digests compare run after run.
        self.append([e["id"] for e in entries], [orjson.dumps(e) for e in entries])

    def append_arrow(self, batch: Any) -> None:
        """Stage a table of ``pos``, ``id`` and ``wire`` columns (positions from ``rows``)."""
        assert self._con is not None
        # The digest is DuckDB's 64-bit hash of the wire entry, computed vectorised. Should a
        # DuckDB upgrade change the hash, every ID looks changed once: resent as adds, which is
        # correct (the writes are idempotent), only slower.
        self._con.register("_batch", batch)
        try:
            self._con.execute("INSERT INTO staging SELECT pos, id, hash(wire), wire FROM _batch")
        finally:
            self._con.unregister("_batch")
        self._rows += batch.num_rows

    @property
    def rows(self) -> int:
        """Records staged so far, duplicates included."""
        return self._rows

    # -- the diff --------------------------------------------------------------------------

    def plan(self, full: bool) -> Plan:
        """Deduplicate the source (last occurrence wins) and diff it against the snapshot."""
        assert self._con is not None
        con = self._con
        self.full = full or not self.meta.synced or self.meta.needs_full
        (records,) = _one(con, "SELECT count(DISTINCT id) FROM staging")
        if records == self._rows:
            # No duplicates (the usual case): the staged rows are the source, and the costly
            # GROUP BY that keeps each ID's last occurrence is not needed.
            self._fresh = "(SELECT id, h AS digest, pos FROM staging)"
        else:
            con.execute(
                "CREATE OR REPLACE TABLE fresh AS SELECT id, arg_max(h, pos) AS digest, "
                "max(pos) AS pos FROM staging GROUP BY id"
            )
            self._fresh = "fresh"
        if not (self.attached and self.meta.synced):
            # A first sync: everything is new; no join, no plan table.
            first = tuple(
                row[0]
                for row in con.execute(
                    f"SELECT id FROM {self._fresh} ORDER BY id LIMIT ?", [EXAMPLES]
                ).fetchall()
            )
            self._planned = int(records)
            return Plan(
                records=int(records),
                rows=self._rows,
                added=int(records),
                changed=0,
                removed=0,
                examples={"added": first, "changed": (), "removed": ()},
            )
        (dirty,) = _one(con, "SELECT count(*) FROM st.dirty")
        if dirty:
            # IDs an unfinished sync may have touched count as unknown: no digest to match.
            con.execute(
                "CREATE OR REPLACE TABLE prev AS SELECT coalesce(s.id, d.id) AS id, "
                "CASE WHEN d.id IS NULL THEN s.digest END AS digest, s.id IS NOT NULL AS known "
                "FROM st.snapshot s FULL OUTER JOIN (SELECT DISTINCT id FROM st.dirty) d "
                "ON s.id = d.id"
            )
            prev = "prev"
        else:
            prev = "(SELECT id, digest, true AS known FROM st.snapshot)"
        con.execute(
            f"CREATE OR REPLACE TABLE plan AS SELECT coalesce(f.id, p.id) AS id, f.pos AS pos, "
            f"CASE WHEN f.id IS NULL THEN {REMOVED} "
            f"WHEN p.id IS NULL OR NOT p.known THEN {ADDED} ELSE {CHANGED} END AS kind "
            f"FROM {self._fresh} f FULL OUTER JOIN {prev} p ON f.id = p.id "
            "WHERE f.id IS NULL OR p.id IS NULL OR p.digest IS NULL OR p.digest <> f.digest"
        )
        counts = dict(con.execute("SELECT kind, count(*) FROM plan GROUP BY kind").fetchall())
        self._planned = sum(counts.values())
        examples = {
            name: tuple(
                row[0]
                for row in con.execute(
                    "SELECT id FROM plan WHERE kind = ? ORDER BY id LIMIT ?", [kind, EXAMPLES]
                ).fetchall()
            )
            for kind, name in KINDS.items()
        }
        return Plan(
            records=int(records),
            rows=self._rows,
            added=int(counts.get(ADDED, 0)),
            changed=int(counts.get(CHANGED, 0)),
            removed=int(counts.get(REMOVED, 0)),
            examples=examples,
        )

    # -- reading the plan back -------------------------------------------------------------

    def reader(self, what: str, batch_size: int) -> Generator[list[Any], None, None]:
        """The plan's IDs to remove (``remove``), entries to add (``add``) or the whole source
        (``all``), in lists of at most ``batch_size``. Call ``next`` from the worker thread."""
        assert self._con is not None
        if what == "remove":
            query = f"SELECT id FROM plan WHERE kind = {REMOVED} ORDER BY id"
        elif what == "add":
            query = (
                "SELECT s.wire FROM plan p JOIN staging s ON s.pos = p.pos "
                f"WHERE p.kind IN ({ADDED}, {CHANGED}) ORDER BY p.pos"
            )
        elif self._fresh != "fresh":
            query = "SELECT wire FROM staging"  # no duplicates: no join needed
        else:
            query = "SELECT s.wire FROM fresh f JOIN staging s ON s.pos = f.pos"
        cursor = self._con.cursor()
        return _batches(cursor, query, batch_size)

    # -- recording the run -----------------------------------------------------------------

    def mark_started(self) -> None:
        """Before the first request: this sync is in progress; its IDs' states become unknown."""
        con = self._writable()
        con.execute("BEGIN")
        if self.full:
            con.execute(f"UPDATE st.{_META} SET needs_full = true")
        else:
            con.execute(
                "INSERT INTO st.dirty SELECT id FROM plan WHERE id NOT IN (SELECT id FROM st.dirty)"
            )
        con.execute(f"UPDATE st.{_META} SET in_progress = true, started = ?", [_now()])
        con.execute("COMMIT")

    def mark_finished(self) -> None:
        """After every request was acknowledged: the source becomes the snapshot, atomically."""
        con = self._writable()
        (records,) = _one(con, f"SELECT count(*) FROM {self._fresh}")
        con.execute("BEGIN")
        if self.full or self._planned > _REWRITE_SHARE * max(self.meta.snapshot_count, 1):
            con.execute("DELETE FROM st.snapshot")
            con.execute(f"INSERT INTO st.snapshot SELECT id, digest FROM {self._fresh}")
        else:
            con.execute("DELETE FROM st.snapshot WHERE id IN (SELECT id FROM plan)")
            con.execute(
                f"INSERT INTO st.snapshot SELECT f.id, f.digest FROM plan p "
                f"JOIN {self._fresh} f ON f.pos = p.pos WHERE p.kind IN ({ADDED}, {CHANGED})"
            )
        con.execute("DELETE FROM st.dirty")
        con.execute(
            f"UPDATE st.{_META} SET synced = true, needs_full = false, in_progress = false, "
            "snapshot_count = ?, finished = ?",
            [records, _now()],
        )
        con.execute("COMMIT")
        con.execute("CHECKPOINT st")

    def _writable(self) -> Any:
        assert self._con is not None
        if self.read_only:
            raise RuntimeError("a dry run never writes the state")
        return self._con

    def snapshot(self) -> dict[str, int]:
        """The snapshot as a dict (for tests and inspection; it may hold millions of IDs)."""
        assert self._con is not None
        if not self.attached:
            return {}
        return dict(self._con.execute("SELECT id, digest FROM st.snapshot").fetchall())

    def close(self) -> None:
        """Close the database and release the lock; idempotent."""
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()
            # DuckDB removes its spill files on close; the directory too, if it is empty.
            with contextlib.suppress(OSError):
                os.rmdir(self.path + ".tmp")
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # also releases the flock


def _one(con: Any, query: str) -> tuple[Any, ...]:
    row = con.execute(query).fetchone()
    assert row is not None
    return tuple(row)


def _batches(cursor: Any, query: str, size: int) -> Generator[list[Any], None, None]:
    try:
        reader = cursor.sql(query).to_arrow_reader(size)
        for batch in reader:
            yield batch.column(0).to_pylist()
    finally:
        cursor.close()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

"""What earlier syncs wrote into a destination, and what this run claimed: embedded SQLite.

``DEST/.fastio-dl/state.db`` holds, per local path, the node id, context, remote version, hash
and size, and the local size and mtime written. A file is up to date when the remote version,
hash and size match the record and the local file still has the recorded size and mtime.

Nothing here is held per file in Python: a sync of a million files reads its records one by one
and writes them in batches (one transaction each), and the paths a run claims live in a private
on-disk SQLite database (:class:`Claims`), so memory stays flat whatever the number of files.

Durability: records are written only in batches handed over by the engine after the files they
describe were flushed to disk (see ``durability.Flusher``), so a record never claims a file that a
crash could still lose. A record lost in a crash costs nothing but a hash: the next run finds an
untracked file, hashes it, and adopts it when it is identical.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    context TEXT NOT NULL,
    context_id TEXT NOT NULL,
    version TEXT,
    hash TEXT,
    hash_algo TEXT,
    size INTEGER NOT NULL,
    local_size INTEGER NOT NULL,
    local_mtime_ns INTEGER NOT NULL,
    synced_at REAL NOT NULL
)
"""
QUERY_PATHS = 500  # paths per IN (...) query: well under SQLite's limit of bound parameters
_COLUMNS = (
    "path, node_id, context, context_id, version, hash, hash_algo, size, local_size, local_mtime_ns"
)


class Record(NamedTuple):
    """One tracked file (a NamedTuple: a sync reads one per file, a million of them)."""

    path: str
    node_id: str
    context: str
    context_id: str
    version: str | None
    hash: str | None
    hash_algo: str | None
    size: int
    local_size: int
    local_mtime_ns: int


class State:
    def __init__(self, path: Path) -> None:
        # Imported here: ``get`` loads the sync policy's module but never opens a state database,
        # and sqlite3 would cost every run's start-up.
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db: sqlite3.Connection = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit may be lost on power loss (the files it describes are then hashed
        # and adopted again), never half-applied.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)

    def get(self, path: str) -> Record | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None else Record._make(row)

    def get_many(self, paths: list[str]) -> dict[str, Record]:
        """The records of ``paths`` that exist. A listing page's paths lie side by side in
        the table: one range of it is read (bounded), and only when that range holds many
        other records, one query per ``QUERY_PATHS`` paths."""
        if not paths:
            return {}
        # SQLite orders TEXT by its UTF-8 bytes, which is Python's order of code points.
        limit = 2 * len(paths) + 64
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE path BETWEEN ? AND ? LIMIT ?",
            (min(paths), max(paths), limit),
        ).fetchall()
        if len(rows) < limit:
            wanted = set(paths)
            return {row[0]: Record._make(row) for row in rows if row[0] in wanted}
        query = f"SELECT {_COLUMNS} FROM files WHERE path IN ({{}})"
        return {
            row[0]: Record._make(row) for rows in _queries(self.db, query, paths) for row in rows
        }

    def paths(self) -> Iterator[str]:
        """Every tracked path, in order (a cursor: nothing is held in memory)."""
        return (row[0] for row in self.db.execute("SELECT path FROM files ORDER BY path"))

    def count(self) -> int:
        """How many files are tracked."""
        return int(self.db.execute("SELECT count(*) FROM files").fetchone()[0])

    def put(self, record: Record) -> None:
        self.put_many([record])

    def put_many(self, records: Iterable[Record]) -> None:
        """Write records in one transaction (one WAL commit instead of one per file)."""
        now = time.time()
        rows = [(*_fields(r), now) for r in records]
        if not rows:
            return
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def forget(self, path: str) -> None:
        self.forget_many([path])

    def forget_many(self, paths: Iterable[str]) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def _queries(db: sqlite3.Connection, query: str, values: list[str]) -> Iterator[sqlite3.Cursor]:
    """``query`` (its ``{}`` becomes the marks of an ``IN``) over ``values``, ``QUERY_PATHS``
    of them a query, each run only when the one before has been read."""
    for start in range(0, len(values), QUERY_PATHS):
        chunk = values[start : start + QUERY_PATHS]
        yield db.execute(query.format(",".join("?" * len(chunk))), chunk)


def _fields(record: Record) -> tuple[object, ...]:
    return (
        record.path,
        record.node_id,
        record.context,
        record.context_id,
        record.version,
        record.hash,
        record.hash_algo,
        record.size,
        record.local_size,
        record.local_mtime_ns,
    )


def local_matches_record(path: str | Path, record: Record) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == record.local_size and stat.st_mtime_ns == record.local_mtime_ns


class Claims:
    """The local paths this run claimed, each with its owner (context id, node id).

    Kept in a private SQLite database on disk that disappears when closed: the planner asks it
    about every file (two names that would be one file, the same file asked for twice), and
    sync asks it which tracked paths the run no longer planned. SQLite's page cache is bounded
    (a few MB), so a million paths cost disk, not memory.
    """

    COMMIT_EVERY = 4096  # claims per transaction: one journal write per batch, not per path

    def __init__(self) -> None:
        # "" is SQLite's private temporary database: on disk, deleted when the connection closes.
        import sqlite3

        self.db: sqlite3.Connection = sqlite3.connect("", isolation_level=None)
        # Nothing to recover after a crash (the data dies with us), but a page's claims must
        # be undone when one of them is taken: the journal is kept in memory.
        self.db.execute("PRAGMA journal_mode=MEMORY")
        self.db.execute("PRAGMA synchronous=OFF")
        # One index, by folded path: a path has one folded form, so it is unique too; the run's
        # paths are read in order once, at its end (a sort), not kept in order at every claim.
        self.db.execute(
            "CREATE TABLE claims (folded TEXT PRIMARY KEY, path TEXT NOT NULL,"
            " context_id TEXT NOT NULL, node_id TEXT NOT NULL) WITHOUT ROWID"
        )
        # Paths this run leaves alone without claiming them (a saved note, without --notes):
        # not "gone", so sync --delete keeps them; they take no part in collisions.
        self.db.execute("CREATE TABLE kept (path TEXT PRIMARY KEY)")
        self._taken = sqlite3.IntegrityError
        self._count = 0
        self._uncommitted = 0

    def __len__(self) -> int:
        return self._count

    def claim(self, path: str, owner: tuple[str, str]) -> bool:
        """Claim ``path`` for ``owner``; False (nothing changed) when the path, or one that
        differs only in case, is taken already."""
        if not self._uncommitted:
            self.db.execute("BEGIN")
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO claims VALUES (?,?,?,?)", (path.casefold(), path, *owner)
        )
        self._uncommitted += 1
        if self._uncommitted >= self.COMMIT_EVERY:
            self._commit()
        if cursor.rowcount != 1:
            return False
        self._count += 1
        return True

    def claim_all(self, claims: list[tuple[str, tuple[str, str]]]) -> bool:
        """Claim every path of ``claims`` (path, owner) at once, when none of them is taken, not
        even in another case, and no two of them are one: a listing page's usual case, in one
        statement instead of one per path. False: nothing changed (claim them one by one)."""
        rows = [(path.casefold(), path, *owner) for path, owner in claims]
        if not self._uncommitted:
            self.db.execute("BEGIN")
        # Inserted at once, and undone when one of them was taken (or two of them are one).
        self.db.execute("SAVEPOINT page")
        try:
            self.db.executemany("INSERT INTO claims VALUES (?,?,?,?)", rows)
        except self._taken:
            self.db.execute("ROLLBACK TO page")
            self.db.execute("RELEASE page")
            if not self._uncommitted:
                self.db.execute("COMMIT")  # the transaction begun here holds nothing
            return False
        self.db.execute("RELEASE page")
        self._count += len(rows)
        self._uncommitted += len(rows)
        if self._uncommitted >= self.COMMIT_EVERY:
            self._commit()
        return True

    def keep(self, path: str) -> None:
        """Mark ``path`` as still wanted, though this run does not fetch it."""
        if not self._uncommitted:
            self.db.execute("BEGIN")
        self.db.execute("INSERT OR IGNORE INTO kept VALUES (?)", (path,))
        self._uncommitted += 1

    def holder(self, path: str) -> tuple[str, tuple[str, str]] | None:
        """The claimed path equal to ``path`` up to case, and its owner."""
        row = self.db.execute(
            "SELECT path, context_id, node_id FROM claims WHERE folded = ?", (path.casefold(),)
        ).fetchone()
        return None if row is None else (row[0], (row[1], row[2]))

    def owner(self, path: str) -> tuple[str, str] | None:
        """Who claimed exactly ``path``."""
        held = self.holder(path)
        return held[1] if held is not None and held[0] == path else None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.owner(path) is not None

    def paths(self) -> Iterator[str]:
        """Every claimed or kept path, in order (a cursor)."""
        self._commit()
        query = "SELECT path FROM claims UNION SELECT path FROM kept ORDER BY path"
        return (row[0] for row in self.db.execute(query))

    def _commit(self) -> None:
        if self._uncommitted:
            self.db.execute("COMMIT")
            self._uncommitted = 0

    def close(self) -> None:
        self.db.close()


def unclaimed(state: State, claims: Claims) -> Iterator[str]:
    """Tracked paths that this run did not claim, in order: a merge of two sorted cursors, so
    a million paths on each side cost no memory."""
    claimed = claims.paths()
    current = next(claimed, None)
    for path in state.paths():
        while current is not None and current < path:
            current = next(claimed, None)
        if current != path:
            yield path

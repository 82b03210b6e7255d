"""What earlier syncs wrote into a destination: an embedded SQLite database (stdlib, WAL).

``DEST/.fastio-dl/state.db`` holds, per local path, the node id, context, remote version, hash
and size, and the local size and mtime written. A file is up to date when the remote version,
hash and size match the record and the local file still has the recorded size and mtime.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


@dataclass(frozen=True)
class Record:
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
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)
        self._cache = {row.path: row for row in self._all()}

    def _all(self) -> list[Record]:
        rows = self.db.execute(
            "SELECT path, node_id, context, context_id, version, hash, hash_algo, size, local_size,"
            " local_mtime_ns FROM files"
        ).fetchall()
        return [Record(*row) for row in rows]

    def get(self, path: str) -> Record | None:
        return self._cache.get(path)

    def paths(self) -> set[str]:
        return set(self._cache)

    def count(self) -> int:
        """How many files are tracked."""
        return len(self._cache)

    def put(self, record: Record) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
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
                time.time(),
            ),
        )
        self._cache[record.path] = record

    def forget(self, path: str) -> None:
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        self._cache.pop(path, None)

    def close(self) -> None:
        self.db.close()


def local_matches_record(path: Path, record: Record) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == record.local_size and stat.st_mtime_ns == record.local_mtime_ns

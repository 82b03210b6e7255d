"""The data types shared by the layers: nodes and versions as the client parsed them, targets,
remote files, plan entries, a run's outcome.

Plain dataclasses and constants only: parsing a manifest or reading the sync state must not
import the network or the terminal (a test checks that this module imports neither aiohttp,
typer nor rich).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from fastio_dl.errors import FastioDlError
from fastio_dl.events import FileFinished, Kind
from fastio_dl.refs import Ref
from fastio_dl.state import Claims

STATE_DIR = ".fastio-dl"  # fastio-dl's own files in a destination (sync state, lock)
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"


class Node(NamedTuple):
    """A node as the client parsed it once from the API's answer (a listing's child, a details
    or File Share answer); no raw answer goes past the client.

    A NamedTuple: immutable, no per-instance dict, and made in a quarter of the time a frozen
    dataclass takes (a listing of a million files makes a million of them).
    """

    id: str  # lower case, no hyphens ("" when the answer gave none)
    name: str | None  # as given; None when missing or empty
    kind: str  # ``type`` in lower case: file, folder, note, link (or one not known here)
    size: int | None  # None when missing or not a number
    hash: str | None  # lower case
    hash_algo: str | None  # lower case: md5, sha1, sha256, sha384 (or one not known here)
    version: str | None  # changes when the content is replaced; the id stays
    modified: str | None  # as given (``YYYY-MM-DD HH:MM:SS UTC`` or ISO 8601)
    parent: str | None  # the parent folder's id, as given
    complete: bool  # size, hash and a ``version`` key all given (some builds list files without)


class Version(NamedTuple):
    """One entry of a file's versions answer."""

    id: str  # "" when the entry names none
    size: int | None
    hash: str | None  # lower case
    hash_algo: str | None  # lower case; None: the file's own applies
    created: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """One thing to fetch: a reference and, optionally, where it goes (manifest ``DEST``)."""

    ref: Ref
    dest: Path | None = None  # relative; for a file the file path, for a folder the directory
    line: int | None = None  # manifest line, for --failed-manifest and messages


class RemoteFile(NamedTuple):
    """What the transfer needs of a remote file (a NamedTuple: one per file, made quickly)."""

    context: str
    context_id: str
    node_id: str
    name: str
    size: int
    hash: str | None
    hash_algo: str | None
    version: str | None
    kind: str = "file"  # or "note": markdown through readnote, saved as NAME.md
    pinned: bool = False  # REF@VERSION: ``version`` was asked for, it is not the current one

    @property
    def read_version(self) -> str | None:
        """The ``version_id`` a read pins. A File Share's current file is read at its plain
        documented path; its version path only for a version asked for."""
        return self.version if self.pinned or self.context != "fileshare" else None


@dataclass(slots=True)
class PlanItem:
    """A file to download: what it is remotely and where it goes (relative to the destination,
    components joined by ``/`` as the sync state keys them); ``key`` tells its events apart
    (numbered by the planner)."""

    target: Target
    remote: RemoteFile
    relpath: str
    key: int = 0
    content: bytes | None = None  # a note's text, read before the local decision


@dataclass(frozen=True, slots=True)
class PlanSkip:
    target: Target
    node_id: str
    relpath: str
    kind: Kind
    reason: str


@dataclass(frozen=True, slots=True)
class PlanFailure:
    target: Target
    node_id: str
    relpath: str | None
    error: str


PlanEntry = PlanItem | PlanSkip | PlanFailure


@dataclass
class Outcome:
    """What a run did: counts, and what the command needs to pick its exit code."""

    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    fatal: FastioDlError | None = None
    interrupted: bool = False
    failed_targets: list[Target] = field(default_factory=list)
    plan_failures: int = 0  # references or folders that could not be resolved completely
    # Every local path this run claimed (in SQLite: a million paths cost no memory)
    planned_paths: Claims = field(default_factory=Claims)
    signal: int | None = None  # the signal that interrupted the run
    files: list[FileFinished] = field(default_factory=list)  # each file's result, when recorded

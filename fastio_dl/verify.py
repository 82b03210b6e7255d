"""``verify``: re-hash local files against the remote (or the sync state) and report drift."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastio_dl.client import FastioClient
from fastio_dl.errors import UsageError
from fastio_dl.hashing import KNOWN_ALGOS, hash_file
from fastio_dl.models import (
    PART_SUFFIX,
    SIDECAR_SUFFIX,
    STATE_DIR,
    PlanEntry,
    PlanFailure,
    PlanItem,
    Target,
)
from fastio_dl.planner import Planner
from fastio_dl.state import State
from fastio_dl.syncing import state_path

HASH_THREADS = 4


@dataclass(frozen=True)
class Expected:
    size: int
    hash: str | None
    hash_algo: str | None


@dataclass
class VerifyReport:
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)  # no usable hash: size only
    unresolved: list[str] = field(default_factory=list)  # references that did not resolve

    @property
    def clean(self) -> bool:
        return not (self.missing or self.changed or self.extra or self.unresolved)

    def rows(self) -> list[tuple[str, str, str | None]]:
        """(status, path or reference, detail) of each file not as expected, then each
        reference that did not resolve."""
        rows: list[tuple[str, str, str | None]] = [("missing", p, None) for p in self.missing]
        rows += [("changed", p, d) for p, d in self.changed]
        rows += [("extra", p, None) for p in self.extra]
        rows += [("unresolved", u, None) for u in self.unresolved]
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "ok": len(self.ok),
            "missing": len(self.missing),
            "changed": len(self.changed),
            "extra": len(self.extra),
            "unverified_hash": len(self.unverifiable),
            "unresolved": len(self.unresolved),
        }


async def expected_from_targets(
    client: FastioClient, targets: list[Target]
) -> tuple[dict[str, Expected], list[str]]:
    """Resolve a manifest to {local path: size and hash} with the same planner as ``sync``."""
    queue: asyncio.Queue[PlanEntry | None] = asyncio.Queue()
    planner = Planner(client, queue)
    task = asyncio.create_task(planner.run(targets))
    expected: dict[str, Expected] = {}
    unresolved: list[str] = []
    while (entry := await queue.get()) is not None:
        if isinstance(entry, PlanItem):
            remote = entry.remote
            expected[entry.relpath] = Expected(remote.size, remote.hash, remote.hash_algo)
        elif isinstance(entry, PlanFailure):
            unresolved.append(f"{entry.target.ref.text}: {entry.error}")
    await task
    return expected, unresolved


def expected_from_state(dest: Path) -> dict[str, Expected]:
    """What the sync state of ``dest`` records for each file."""
    if not state_path(dest).is_file():
        raise UsageError(f"{dest} has no sync state", "give a MANIFEST to check against the remote")
    state = State(state_path(dest))
    try:
        out = {}
        for path in state.paths():
            record = state.get(path)
            if record is not None:
                out[path] = Expected(record.size, record.hash, record.hash_algo)
        return out
    finally:
        state.close()


def _local_files(dest: Path) -> Iterable[str]:
    for root, dirs, files in os.walk(dest):
        if Path(root) == dest and STATE_DIR in dirs:
            dirs.remove(STATE_DIR)
        for name in files:
            if name.endswith((PART_SUFFIX, SIDECAR_SUFFIX)):
                continue
            yield (Path(root) / name).relative_to(dest).as_posix()


def _check(dest: Path, relpath: str, expected: Expected) -> tuple[str, str | None]:
    path = dest / relpath
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing", None
    if size != expected.size:
        return "changed", f"size {size}, expected {expected.size}"
    algo = (expected.hash_algo or "").lower()
    if not expected.hash or algo not in KNOWN_ALGOS:
        return "unverifiable", None
    hasher, _ = hash_file(path, algo)
    if hasher.hexdigest() != expected.hash.lower():
        return "changed", f"{algo} differs"
    return "ok", None


def compare(dest: Path, expected: dict[str, Expected]) -> VerifyReport:
    report = VerifyReport()
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        results = pool.map(
            lambda item: (item[0], _check(dest, item[0], item[1])), sorted(expected.items())
        )
        for relpath, (status, detail) in results:
            if status == "ok":
                report.ok.append(relpath)
            elif status == "missing":
                report.missing.append(relpath)
            elif status == "unverifiable":
                report.ok.append(relpath)
                report.unverifiable.append(relpath)
            else:
                report.changed.append((relpath, detail or ""))
    report.extra = sorted(set(_local_files(dest)) - set(expected))
    return report

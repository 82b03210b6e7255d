"""References -> a stream of plan entries: (remote file, safe local path), skips and failures.

The planner runs ahead of the download slots and feeds them through a queue, so that folder
listings and bulk details overlap the transfers instead of preceding them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastio_dl.client import BULK_DETAILS_MAX, FastioClient
from fastio_dl.errors import AuthError, FastioDlError, describe
from fastio_dl.events import Kind
from fastio_dl.models import (
    Node,
    PlanEntry,
    PlanFailure,
    PlanItem,
    PlanSkip,
    RemoteFile,
    Target,
)
from fastio_dl.names import safe_child, safe_name
from fastio_dl.state import Claims

LIST_CONCURRENCY = 4
HEAD_START = 32  # the run's first files are handed on one by one as they are planned
DETAILS_CONCURRENCY = 4


def remote_file(context: str, context_id: str, node: Node) -> RemoteFile:
    """What the transfer needs of a node (a size of -1: the API gave none)."""
    return RemoteFile(
        context,
        context_id,
        node.id,
        node.name or node.id or "unnamed",
        -1 if node.size is None else node.size,
        node.hash,
        node.hash_algo,
        node.version,
    )


def _owner(remote: RemoteFile) -> tuple[str, str]:
    """Who claims a local path: the context and the node (an earlier version of a file is
    another file: asked for beside the current one, both may not land on one path)."""
    node_key = f"{remote.node_id}@{remote.version}" if remote.pinned else remote.node_id
    return (remote.context_id, node_key)


def _relpath(dest: Path) -> str:
    """A manifest DEST as plan entries spell relative paths."""
    text = dest.as_posix()
    return "" if text == "." else text


def note_file_name(name: str) -> str:
    """A note is saved as ``NAME.md`` (a name already ending in ``.md`` stays as it is)."""
    return name if name.lower().endswith(".md") else f"{name}.md"


@dataclass
class Planner:
    client: FastioClient
    out: asyncio.Queue[PlanEntry | None]
    notes: bool = False  # --notes: notes in folders are saved too (as NAME.md)
    # Every local path claimed so far, with its owner: in SQLite, not in memory (a million
    # files would otherwise cost hundreds of MB here).
    claimed: Claims = field(default_factory=Claims)
    done: set[int] = field(default_factory=set)  # id() of each target planned completely
    # Told of a page's files (claimed, numbered) before they are queued: the sync policy looks
    # up their records in one query instead of one per file, and the files it settles there
    # (up to date) come back by key, not to be queued.
    lookahead: Callable[[list[PlanItem]], set[int]] | None = None
    _next_key: int = 0
    _details_gate: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(DETAILS_CONCURRENCY)
    )
    _list_gate: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(LIST_CONCURRENCY)
    )

    async def run(self, targets: list[Target]) -> None:
        """Plan every target, then put ``None`` to say the plan is complete.

        Only then: a planner stopped by an error or a cancel puts nothing (the consumers may be
        gone, and a put on a full queue would wait for ever); the pipeline accounts for what
        it left. ``done`` holds (by ``id``) the targets planned completely.
        """
        fileshares = [t for t in targets if t.ref.context == "fileshare"]
        roots = [t for t in targets if t.ref.node in ("root", "trash")]
        by_context: dict[tuple[str, str], list[Target]] = {}
        for target in targets:
            if target.ref.node not in ("root", "trash") and target.ref.context != "fileshare":
                by_context.setdefault((target.ref.context, target.ref.context_id), []).append(
                    target
                )
        jobs = [self._planned(self._walk_root(t), [t]) for t in roots]
        jobs += [self._planned(self._fileshare(t), [t]) for t in fileshares]
        for (context, context_id), group in by_context.items():
            for start in range(0, len(group), BULK_DETAILS_MAX):
                chunk = group[start : start + BULK_DETAILS_MAX]
                jobs.append(self._planned(self._resolve(context, context_id, chunk), chunk))
        await _gather_all(jobs)
        await self.out.put(None)

    async def _planned(self, job: Coroutine[Any, Any, None], targets: list[Target]) -> None:
        await job
        self.done.update(map(id, targets))

    async def _emit_all(self, entries: list[PlanEntry]) -> None:
        """Queue a page's entries in order. Their files are claimed at once when none of their
        paths is taken, not even in another case (the usual case); else one by one."""
        items = [e for e in entries if isinstance(e, PlanItem)]
        if len(items) < 2 or not self.claimed.claim_all(
            [(i.relpath, _owner(i.remote)) for i in items]
        ):
            for entry in entries:
                await self._emit(entry)
            return
        for item in items:
            self._next_key += 1
            item.key = self._next_key
        settled = self.lookahead(items) if self.lookahead is not None else None
        for entry in entries:
            if settled and isinstance(entry, PlanItem) and entry.key in settled:
                continue
            await self.out.put(entry)

    async def _emit(self, entry: PlanEntry) -> None:
        if isinstance(entry, PlanItem):
            path_key = entry.relpath
            owner = _owner(entry.remote)
            # The usual case first: a path nobody claimed yet, not even in another case.
            if not self.claimed.claim(path_key, owner) and not await self._claim_contended(
                entry, path_key, owner
            ):
                return
            self._next_key += 1
            entry.key = self._next_key
        await self.out.put(entry)

    async def _claim_contended(
        self, entry: PlanItem, path_key: str, owner: tuple[str, str]
    ) -> bool:
        """``path_key`` (or a name differing from it only in case) is taken: drop a file asked
        for twice, rename a name that only became equal locally, fail a real collision."""
        other = self.claimed.owner(path_key)
        if other == owner:
            return False  # the same file asked for twice: fetch it once
        sanitised = entry.target.dest is None and safe_name(entry.remote.name) != entry.remote.name
        if other is None or sanitised:
            # Different remote names that became one local name (by case or by sanitising)
            # are told apart deterministically; identical remote names are a real collision.
            entry.relpath = path_key = self._disambiguate(entry.relpath, entry.remote.node_id)
            if self.claimed.claim(path_key, owner):
                return True
            held = self.claimed.holder(path_key)
            other = held[1] if held is not None else ("", "?")
            if other == owner:
                return False
        await self.out.put(
            PlanFailure(
                entry.target,
                entry.remote.node_id,
                entry.relpath,
                f"local path {path_key} is already taken by node {other[1]}; "
                "give one of them another DEST in a manifest",
            )
        )
        return False

    def _disambiguate(self, relpath: str, node_id: str) -> str:
        """Names differing only in case would be one file on macOS/Windows: give the later one
        a deterministic suffix from its node id."""
        if self.claimed.holder(relpath) is None:
            return relpath
        base, _, name = relpath.rpartition("/")
        stem, dot, ext = name.rpartition(".")
        suffix = f"~{node_id[:8]}"
        renamed = f"{stem}{suffix}.{ext}" if dot and stem else f"{name}{suffix}"
        return safe_child(base, renamed)

    async def _resolve(self, context: str, context_id: str, group: list[Target]) -> None:
        async with self._details_gate:
            try:
                nodes, errors = await self.client.details(
                    context, context_id, [t.ref.node for t in group]
                )
            except AuthError:
                raise
            except FastioDlError as exc:
                for target in group:
                    await self._emit(PlanFailure(target, target.ref.node, None, describe(exc)))
                return
        by_id = {n.id: n for n in nodes}
        jobs = []
        for target in group:
            node = by_id.get(target.ref.node)
            if node is None:
                why = errors.get(target.ref.node, "not found")
                await self._emit(
                    PlanFailure(target, target.ref.node, None, f"node {target.ref.node}: {why}")
                )
                continue
            name = node.name or target.ref.node
            if node.kind == "folder":
                if target.ref.version:
                    await self._emit(
                        PlanFailure(
                            target,
                            target.ref.node,
                            None,
                            f"{name} is a folder: a version names a file",
                        )
                    )
                    continue
                base = _relpath(target.dest) if target.dest is not None else safe_name(name)
                jobs.append(self._walk(target, context, context_id, target.ref.node, base))
            else:
                relpath = _relpath(target.dest) if target.dest is not None else safe_name(name)
                await self._file_entry(target, context, context_id, node, relpath, named=True)
        await _gather_all(jobs)

    async def _fileshare(self, target: Target) -> None:
        """A File Share: its one file, from the share's details (no listing, no bulk details)."""
        try:
            node = await self.client.fileshare_file(target.ref.context_id)
        except FastioDlError as exc:
            # A refused link (wrong password, not shared with this account) says nothing about
            # the token or the other references: this one fails, the run goes on.
            await self._emit(PlanFailure(target, target.ref.context_id, None, describe(exc)))
            return
        name = node.name or target.ref.context_id
        relpath = _relpath(target.dest) if target.dest is not None else safe_name(name)
        await self._file_entry(
            target, "fileshare", target.ref.context_id, node, relpath, named=True
        )

    async def _file_entry(
        self,
        target: Target,
        context: str,
        context_id: str,
        node: Node,
        relpath: str,
        *,
        named: bool = False,
    ) -> None:
        """``named``: the reference names this node itself (not a folder holding it)."""
        if node.kind == "file" and target.ref.version and named:
            await self._versioned(target, context, context_id, node, relpath)
        else:
            await self._emit(self._entry(target, node, relpath, named=named))

    def _entry(self, target: Target, node: Node, relpath: str, *, named: bool = False) -> PlanEntry:
        """A node's plan entry (not a file version asked for by name: see ``_versioned``); the
        node is in the target's context."""
        kind = node.kind
        if kind == "file":
            remote = remote_file(target.ref.context, target.ref.context_id, node)
            if remote.size < 0:
                return PlanFailure(target, node.id, relpath, "the API gave no size for this file")
            return PlanItem(target, remote, relpath)
        if kind == "note" and (self.notes or named):
            # A note asked for by name is wanted even without --notes.
            if target.dest is None or not named:
                base, _, name = relpath.rpartition("/")
                relpath = safe_child(base, note_file_name(name))
            remote = remote_file(target.ref.context, target.ref.context_id, node)
            remote = remote._replace(kind="note", size=0, hash=None, hash_algo=None)
            if target.ref.version and named:
                remote = remote._replace(version=target.ref.version, pinned=True)
            return PlanItem(target, remote, relpath)
        if kind == "note":
            # An earlier --notes run may have saved it: still wanted, not gone (--delete).
            base, _, name = relpath.rpartition("/")
            self.claimed.keep(safe_child(base, note_file_name(name)))
        if kind in ("note", "link"):
            why = "note (saved only with --notes)" if kind == "note" else "link (no bytes)"
            return PlanSkip(target, node.id, relpath, Kind.NO_BYTES, why)
        return PlanSkip(
            target, node.id, relpath, Kind.UNSUPPORTED, f"unsupported node type {kind!r}"
        )

    async def _versioned(
        self,
        target: Target,
        context: str,
        context_id: str,
        node: Node,
        relpath: str,
    ) -> None:
        """``REF@VERSION``: that version's own size and hash, read with its ``version_id``."""
        wanted = target.ref.version
        current = remote_file(context, context_id, node)
        try:
            async with self._details_gate:
                versions = await self.client.versions(context, context_id, current.node_id)
        except AuthError:
            raise
        except FastioDlError as exc:
            await self._emit(PlanFailure(target, current.node_id, relpath, describe(exc)))
            return
        match = [v for v in versions if v.id == wanted]
        if not match:
            await self._emit(
                PlanFailure(
                    target,
                    current.node_id,
                    relpath,
                    f"{current.name} has no version {wanted!r} "
                    f"(`fastio-dl ls --versions {target.ref.text.rpartition('@')[0]}` lists them)",
                )
            )
            return
        version = match[0]
        if version.size is None:
            await self._emit(
                PlanFailure(target, current.node_id, relpath, f"version {wanted} has no size")
            )
            return
        remote = current._replace(
            size=version.size,
            hash=version.hash,
            hash_algo=version.hash_algo or current.hash_algo,
            version=wanted,
            pinned=True,
        )
        await self._emit(PlanItem(target, remote, relpath))

    async def _walk_root(self, target: Target) -> None:
        base = _relpath(target.dest) if target.dest is not None else ""
        await self._walk(target, target.ref.context, target.ref.context_id, target.ref.node, base)

    async def _walk(
        self, target: Target, context: str, context_id: str, folder: str, base: str
    ) -> None:
        subfolders: list[tuple[str, str]] = []
        try:
            async with self._list_gate:
                async for page in self.client.list_folder(context, context_id, folder):
                    incomplete: list[Node] = []
                    done = 0
                    while done < len(page):
                        # The run's first files go to the download slots one by one as they
                        # are planned, not after their page; then a page goes at once.
                        first = self._next_key < HEAD_START
                        children = page[done : done + 1] if first else page[done:]
                        done += len(children)
                        entries: list[PlanEntry] = []
                        for child in children:
                            relpath = safe_child(base, child.name or child.id or "unnamed")
                            if child.kind == "folder":
                                subfolders.append((child.id, relpath))
                            elif child.kind == "file" and not child.complete:
                                incomplete.append(child)
                            else:
                                entries.append(self._entry(target, child, relpath))
                        await self._emit_all(entries)
                        if first and entries:
                            await asyncio.sleep(0)
                    if incomplete:
                        await self._complete(target, context, context_id, base, incomplete)
        except AuthError:
            raise
        except FastioDlError as exc:
            await self._emit(PlanFailure(target, folder, base, describe(exc)))
            return
        await _gather_all(
            [self._walk(target, context, context_id, node_id, path) for node_id, path in subfolders]
        )

    async def _complete(
        self,
        target: Target,
        context: str,
        context_id: str,
        base: str,
        partial: list[Node],
    ) -> None:
        """Some builds list files without hash/version: ask bulk details for those."""
        for start in range(0, len(partial), BULK_DETAILS_MAX):
            chunk = partial[start : start + BULK_DETAILS_MAX]
            ids = [n.id for n in chunk]
            names = {n.id: n.name or n.id for n in chunk}
            async with self._details_gate:
                nodes, errors = await self.client.details(context, context_id, ids)
            for node in nodes:
                name = names.get(node.id) or node.name or node.id
                await self._file_entry(target, context, context_id, node, safe_child(base, name))
            for node_id, why in errors.items():
                await self._emit(
                    PlanFailure(target, node_id, safe_child(base, names.get(node_id, node_id)), why)
                )


async def _gather_all(jobs: list[Any]) -> None:
    """Run jobs concurrently; if one fails, cancel the rest and raise its error."""
    if not jobs:
        return
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

"""``ls``: what a reference holds, as rows for a table, JSON lines or a manifest."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TextIO

from fastio_dl.client import FastioClient
from fastio_dl.errors import TransferError, UsageError, human_bytes
from fastio_dl.models import Node
from fastio_dl.names import safe_name
from fastio_dl.planner import note_file_name
from fastio_dl.refs import Ref


@dataclass(frozen=True)
class Entry:
    ref: Ref
    node: Node
    path: PurePosixPath  # relative to the listed folder, from sanitised names

    @property
    def kind(self) -> str:
        return self.node.kind

    @property
    def node_id(self) -> str:
        return self.node.id

    @property
    def reference(self) -> str:
        if self.ref.context == "fileshare":
            return f"fileshare:{self.ref.context_id}"
        prefix = "ws" if self.ref.context == "workspace" else "share"
        return f"{prefix}:{self.ref.context_id}/{self.node_id}"

    def record(self) -> dict[str, Any]:
        return {
            "ref": self.reference,
            "id": self.node_id,
            "name": self.node.name,
            "type": self.kind,
            "path": self.path.as_posix(),
            "size": self.node.size,
            "hash": self.node.hash,
            "hash_algo": self.node.hash_algo,
            "version": self.node.version,
            "modified": self.node.modified,
        }

    def manifest_line(self) -> str:
        return f"{self.reference} {self.path.as_posix()}"

    def table_row(self) -> tuple[str, ...]:
        """The cells under :data:`LS_HEADER`."""
        size = human_bytes(self.node.size or 0) if self.kind == "file" else "-"
        modified = self.node.modified or ""
        return (self.kind, size, modified, self.node_id, self.path.as_posix())


@dataclass(frozen=True)
class VersionRow:
    """One version of a file, as ``ls --versions`` shows it."""

    ref: str  # REF@VERSION, ready for get
    version: str
    size: int | None
    hash: str | None
    hash_algo: str | None
    created: str | None
    current: bool

    def record(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "version": self.version,
            "size": self.size,
            "hash": self.hash,
            "hash_algo": self.hash_algo,
            "created": self.created,
            "current": self.current,
        }

    def table_row(self) -> tuple[str, ...]:
        """The cells under :data:`VERSIONS_HEADER`."""
        return (
            self.version,
            human_bytes(self.size) if self.size is not None else "?",
            self.created or "",
            f"{self.hash_algo}:{self.hash}" if self.hash else "",
            "(current)" if self.current else "",
        )


LS_HEADER = ("TYPE", "SIZE", "MODIFIED", "ID", "PATH")
VERSIONS_HEADER = ("VERSION", "SIZE", "CREATED", "HASH", "")


def table(header: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    """The header and rows in columns as wide as their widest cell."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [tuple(header), *rows]
    ]


async def list_versions(client: FastioClient, ref: Ref) -> list[VersionRow]:
    """A file's versions (``ls --versions``), oldest first as the API lists them."""
    if ref.context == "fileshare":
        node = await client.fileshare_file(ref.context_id)
    elif ref.node in ("root", "trash"):
        raise UsageError(f"{ref.text}: --versions lists the versions of a file, not {ref.node}")
    else:
        nodes, errors = await client.details(ref.context, ref.context_id, [ref.node])
        if not nodes:
            raise TransferError(f"node {ref.node}: {errors.get(ref.node, 'not found')}")
        node = nodes[0]
    if node.kind != "file":
        raise UsageError(f"{ref.text} is a {node.kind}: --versions lists the versions of a file")
    versions = await client.versions(ref.context, ref.context_id, node.id or ref.node)
    base = ref.text.rpartition("@")[0] if ref.version else ref.text
    return [
        VersionRow(
            ref=f"{base}@{version.id}",
            version=version.id,
            size=version.size,
            hash=version.hash,
            hash_algo=version.hash_algo or node.hash_algo,
            created=version.created,
            current=version.id == node.version,
        )
        for version in versions
    ]


async def list_entries(
    client: FastioClient, ref: Ref, *, recursive: bool, notes: bool = False
) -> AsyncIterator[Entry]:
    """A file yields itself; a folder its children (``recursive``: the whole subtree).

    ``notes``: a note's path is the ``NAME.md`` that ``get --notes`` writes.
    """
    if ref.context == "fileshare":
        node = await client.fileshare_file(ref.context_id)
        yield Entry(ref, node, PurePosixPath(safe_name(node.name or ref.context_id)))
        return
    folder = ref.node
    if ref.node not in ("root", "trash"):
        nodes, errors = await client.details(ref.context, ref.context_id, [ref.node])
        if not nodes:
            raise TransferError(f"node {ref.node}: {errors.get(ref.node, 'not found')}")
        node = nodes[0]
        if node.kind != "folder":
            yield Entry(ref, node, PurePosixPath(_local_name(node, ref.node, notes)))
            return
    pending = [(folder, PurePosixPath())]
    while pending:
        current, base = pending.pop(0)
        async for page in client.list_folder(ref.context, ref.context_id, current):
            for child in page:
                entry = Entry(ref, child, base / _local_name(child, "unnamed", notes))
                yield entry
                if recursive and entry.kind == "folder":
                    pending.append((entry.node_id, entry.path))


def _local_name(node: Node, fallback: str, notes: bool) -> str:
    name = safe_name(node.name or node.id or fallback)
    if notes and node.kind == "note":
        return safe_name(note_file_name(name))
    return name


async def write_listing(
    client: FastioClient,
    ref: Ref,
    out: TextIO,
    *,
    recursive: bool,
    notes: bool,
    manifest: bool,
    json_lines: bool,
) -> list[Entry]:
    """``ls``: manifest lines or JSON lines written to ``out`` as the listing arrives; else the
    entries, returned for a table (only the table keeps them, for its widths).

    No flush (a system call) per line: a million entries cost no memory and little time.
    """
    kept: list[Entry] = []
    try:
        async for entry in list_entries(client, ref, recursive=recursive, notes=notes):
            if manifest:
                wanted = entry.kind == "file" or (notes and entry.kind == "note")
                if wanted or (entry.kind == "folder" and not recursive):
                    out.write(entry.manifest_line() + "\n")
            elif json_lines:
                out.write(json.dumps(entry.record(), ensure_ascii=False) + "\n")
            else:
                kept.append(entry)
    finally:
        out.flush()
    return kept

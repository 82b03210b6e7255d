"""``ls``: what a reference holds, as rows for a table, JSON lines or a manifest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from fastio_dl.client import FastioClient
from fastio_dl.errors import TransferError
from fastio_dl.names import safe_name
from fastio_dl.refs import Ref


@dataclass(frozen=True)
class Entry:
    ref: Ref
    node: Mapping[str, Any]
    path: PurePosixPath  # relative to the listed folder, from sanitised names

    @property
    def kind(self) -> str:
        return str(self.node.get("type", "file")).lower()

    @property
    def node_id(self) -> str:
        return str(self.node.get("id", "")).replace("-", "").lower()

    @property
    def reference(self) -> str:
        prefix = "ws" if self.ref.context == "workspace" else "share"
        return f"{prefix}:{self.ref.context_id}/{self.node_id}"

    def record(self) -> dict[str, Any]:
        return {
            "ref": self.reference,
            "id": self.node_id,
            "name": self.node.get("name"),
            "type": self.kind,
            "path": self.path.as_posix(),
            "size": self.node.get("size"),
            "hash": self.node.get("hash"),
            "hash_algo": self.node.get("hash_algo"),
            "version": self.node.get("version"),
            "modified": self.node.get("modified"),
        }

    def manifest_line(self) -> str:
        return f"{self.reference} {self.path.as_posix()}"


async def list_entries(client: FastioClient, ref: Ref, *, recursive: bool) -> AsyncIterator[Entry]:
    """A file yields itself; a folder its children (``recursive``: the whole subtree)."""
    folder = ref.node
    if ref.node not in ("root", "trash"):
        nodes, errors = await client.details(ref.context, ref.context_id, [ref.node])
        if not nodes:
            raise TransferError(f"node {ref.node}: {errors.get(ref.node, 'not found')}")
        node = nodes[0]
        if str(node.get("type", "file")).lower() != "folder":
            yield Entry(ref, node, PurePosixPath(safe_name(str(node.get("name") or ref.node))))
            return
    pending = [(folder, PurePosixPath())]
    while pending:
        current, base = pending.pop(0)
        async for page in client.list_folder(ref.context, ref.context_id, current):
            for child in page:
                entry = Entry(
                    ref, child, base / safe_name(str(child.get("name") or child.get("id")))
                )
                yield entry
                if recursive and entry.kind == "folder":
                    pending.append((entry.node_id, entry.path))

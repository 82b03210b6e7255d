"""What the emulator puts on the wire: envelopes, listing pages in each shape, version lists,
Range parsing, and the odd answers (yes/no envelopes, a socket closed mid-body)."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from fastio_dl.emulator.data import Blob, Node, Version


def versions_json(node: Node) -> list[dict[str, Any]]:
    return [
        {
            "id": v.id,
            "size": v.blob.size,
            "hash": v.blob.digest(node.hash_algo),
            "hash_algo": node.hash_algo,
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v.created)),
        }
        for v in node.versions
    ]


def find_version(node: Node, version_id: str) -> Version | web.Response:
    """The version ``version_id`` of ``node``, or the 404 to answer when it has none such."""
    for version in node.versions:
        if version.id == version_id:
            return version
    return error(404, 1404, "Version not found")


def version_blob(node: Node, version_id: str | None) -> Blob | web.Response | None:
    """The bytes a read names: the node's own, or with ``version_id`` that version's (or the
    404 to answer when it has none such)."""
    if not version_id:
        return node.blob
    version = find_version(node, version_id)
    return version if isinstance(version, web.Response) else version.blob


def abort(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    # Close the socket mid-body: the client sees a broken transfer, as with a dropped link.
    if request.transport is not None:
        request.transport.abort()
    return response


def header_safe(name: str) -> str:
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    try:
        if first == "":
            count = int(last)
            return (max(0, size - count), size - 1) if count > 0 and size > 0 else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def list_payload(
    shape: str, items: list[dict[str, Any]], more: bool, size: int, cursor: str | None
) -> dict[str, Any]:
    """A listing page in one of LIST_SHAPES."""
    if shape == "choice":
        return {
            "nodes": {"items": items, "count": len(items)},
            "next_cursor": cursor,
            "pagination": {"page_size": size, "has_more": more, "next_cursor": cursor},
        }
    if shape == "array":
        return {"nodes": items, "next_cursor": cursor}
    if shape == "items":
        return {"items": items, "pagination": {"has_more": more, "next_cursor": cursor}}
    if shape == "files":
        return {"files": items, "next_cursor": cursor}
    if shape == "wrapped":
        return {"response": {"nodes": items, "next_cursor": cursor}}
    if shape == "id_keyed":
        return {"nodes": {item["id"]: item for item in items} or [], "next_cursor": cursor}
    if shape == "unknown_key":
        return {"data": items, "next_cursor": cursor}
    if shape == "cursor_elsewhere":
        return {"nodes": items, "continuation": cursor}
    return {"nodes": items, "pagination": {"has_more": more}}  # has_more_no_cursor


def say_yes_no(response: web.StreamResponse) -> None:
    """Rewrite a JSON answer's ``result`` true/false as "yes"/"no" (both are live)."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return
    if not isinstance(response.body, bytes):
        return
    body = json.loads(response.body)
    if isinstance(body, dict) and isinstance(body.get("result"), bool):
        body["result"] = "yes" if body["result"] else "no"
        response.body = json.dumps(body).encode()


def ok(payload: dict[str, Any]) -> web.Response:
    return web.json_response({"result": True, **payload})


def error(
    status: int, code: int, text: str, *, params: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "text": text}
    if params is not None:
        error["params"] = params
    return web.json_response({"result": False, "error": error}, status=status, headers=headers)

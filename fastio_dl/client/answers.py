"""Reading the API's JSON answers: the envelope, error bodies, nodes and versions, listing
pages, details payloads and an answer's shape (fastio-api.md sections 2 and 4).

Pure functions over decoded JSON; nothing here makes a request. Each node is parsed here once
into a :class:`~fastio_dl.models.Node`: the rest of fastio-dl never sees the raw answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastio_dl.errors import ApiError, TransferError
from fastio_dl.models import Node, Version

LIST_PAGE_SIZE = 500


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("yes", "true"))


def payload_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload sits beside ``result``; some builds wrap it in ``response``."""
    inner = body.get("response")
    return inner if isinstance(inner, Mapping) else body


def error_text(body: Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        text = error.get("text") or error.get("message") or error.get("error_code")
        if text:
            return str(text)
    elif isinstance(error, str) and error:
        return error
    flat = body.get("error_message")
    return str(flat) if flat else None


def error_code(body: Any) -> int | None:
    """The API's numeric error code (``error.code``, or the flat variant's ``error_id``)."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    raw = error.get("code") if isinstance(error, Mapping) else body.get("error_id")
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        return None


def norm_id(node_id: str) -> str:
    return node_id.replace("-", "").lower()


def parse_node(raw: Mapping[str, Any], key: Any = "") -> Node:
    """A node object as a :class:`Node`; ``key``: its id where the answer keyed it by id.

    Every field is optional (a missing one reads as None, a missing ``type`` as a file) and
    given values are taken as text: what a node lacks is the caller's to judge (a file without
    a size fails, one without a hash is checked by size only). Called once per node of every
    listing: keep it lean.
    """
    get = raw.get
    size: Any = get("size")
    complete = size is not None
    if complete:
        try:
            size = int(size)
        except (TypeError, ValueError):
            size = None
    digest = get("hash")
    algo = get("hash_algo")
    version = get("version")
    name = get("name")
    modified = get("modified")
    parent = get("parent")
    return Node(
        str(get("id", key)).replace("-", "").lower(),
        str(name) if name else None,
        str(get("type", "file")).lower(),
        size,
        str(digest).lower() if digest else None,
        str(algo).lower() if algo else None,
        None if version is None else str(version),
        None if modified is None else str(modified),
        None if parent is None else str(parent),
        complete and bool(digest) and "version" in raw,
    )


def parse_version(raw: Mapping[str, Any]) -> Version:
    """A versions answer's entry; its id is ``id`` (``version_id`` or ``version`` in other
    builds)."""
    version_id = next((str(raw[k]) for k in ("id", "version_id", "version") if raw.get(k)), "")
    size: Any = raw.get("size")
    try:
        size = None if size is None else int(size)
    except (TypeError, ValueError):
        size = None
    digest = raw.get("hash")
    algo = raw.get("hash_algo")
    return Version(
        version_id,
        size,
        str(digest).lower() if digest else None,
        str(algo).lower() if algo else None,
        str(raw.get("created") or "") or None,
    )


_CHILD_KEYS = ("nodes", "items", "files")
_CURSOR_KEYS = ("next_cursor", "nextCursor")
_MORE_KEYS = ("has_more", "hasMore")
# Names that smell of pagination: an answer carrying one we do not read may be telling us of a
# next page in a way we do not understand.
_PAGING_WORDS = ("cursor", "continu", "next", "page_token", "pagetoken")


@dataclass(frozen=True)
class ListingPage:
    """One page of a folder listing: its children, and the cursor of the next page (None: this
    page is the last, and the answer said so)."""

    items: list[Node]
    cursor: str | None


def parse_listing(
    payload: Mapping[str, Any], sent: str | None, page_size: int = LIST_PAGE_SIZE
) -> ListingPage:
    """Read one listing answer strictly (fastio-api.md section 4).

    The children are an array (or an object of nodes keyed by id) under ``nodes``, ``items`` or
    ``files``, possibly one level deeper (``nodes: {items: [...]}``). Only an explicit empty array
    means an empty folder. The next page is ``next_cursor`` at the top level or under
    ``pagination``; without one, the page is the last only if nothing says otherwise: a
    ``has_more: true``, a full page, or a pagination-like key this client does not read are
    errors. Raises :class:`ValueError` with the reason; the caller names the folder.
    """
    items = _children(payload)
    pagination = payload.get("pagination")
    scopes: list[Mapping[str, Any]] = [payload]
    if isinstance(pagination, Mapping):
        scopes.append(pagination)
    cursor: str | None = None
    has_more: bool | None = None
    for scope in scopes:
        for key in _CURSOR_KEYS:
            value = scope.get(key)
            if cursor is None and isinstance(value, (str, int)) and not isinstance(value, bool):
                cursor = str(value) or None
        for key in _MORE_KEYS:
            if key in scope and has_more is None:
                has_more = is_true(scope[key])
    if has_more is False:
        return ListingPage(items, None)
    if cursor is not None and cursor != sent:
        return ListingPage(items, cursor)
    # No next cursor (or the one just sent, which some servers repeat on the last page).
    if has_more:
        raise ValueError("the answer says there is more (has_more) but gives no cursor")
    unknown = sorted(
        f"{'pagination.' if scope is pagination else ''}{key}"
        for scope in scopes
        for key, value in scope.items()
        if key not in _CURSOR_KEYS
        and value not in (None, "", False)
        and any(word in key.lower() for word in _PAGING_WORDS)
    )
    if unknown:
        raise ValueError(f"a next page may be under a key this client does not read: {unknown}")
    if len(items) >= page_size:
        raise ValueError(f"a full page of {len(items)} with no cursor for the next one")
    return ListingPage(items, None)


def _children(payload: Mapping[str, Any]) -> list[Node]:
    for key in _CHILD_KEYS:
        if key not in payload:
            continue
        value = payload[key]
        if isinstance(value, Mapping):
            inner = next((value[k] for k in _CHILD_KEYS if k in value), None)
            if inner is not None:
                value = inner
        nodes = _node_list(value)
        if nodes is None:
            raise ValueError(f"{key!r} holds {_shape_name(value)}, not a list of nodes")
        return nodes
    raise ValueError(f"unrecognised answer (keys: {', '.join(sorted(map(str, payload)))})")


def _node_list(value: Any) -> list[Node] | None:
    """An array of node objects, or an object of them keyed by id (the key is the id of a node
    that names none); None for anything else.

    An empty object is not an empty folder: it is as likely a shape not understood."""
    if isinstance(value, list):
        if all(isinstance(item, Mapping) for item in value):
            return [parse_node(item) for item in value]
        return None
    if isinstance(value, Mapping) and value:
        if not all(isinstance(node, Mapping) for node in value.values()):
            return None
        return [parse_node(node, key) for key, node in value.items()]
    return None


def _shape_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an empty object" if not value else f"an object (keys: {', '.join(map(str, value))})"
    return "an empty list" if value == [] else f"a {type(value).__name__}"


def shape_of(value: Any, depth: int = 0) -> Any:
    """An answer's shape with every value replaced by its type (``--debug``: no data shown)."""
    if isinstance(value, Mapping):
        if depth >= 4:
            return "{...}"
        keys = list(value)
        out = {str(k): shape_of(value[k], depth + 1) for k in keys[:12]}
        if len(keys) > 12:
            out["..."] = f"{len(keys) - 12} more keys"
        return out
    if isinstance(value, list):
        return [shape_of(value[0], depth + 1), f"{len(value)} items"] if value else []
    return "null" if value is None else type(value).__name__


def details_nodes(payload: Mapping[str, Any]) -> list[Node] | None:
    """The nodes of a details answer: ``nodes`` (array or id-keyed object) or ``node``."""
    if "nodes" in payload:
        return _node_list(payload["nodes"]) if payload["nodes"] != [] else []
    node = payload.get("node")
    return [parse_node(node)] if isinstance(node, Mapping) else None


def decoded(raw: bytes) -> Any:
    """A body's JSON, or None for an empty or non-JSON body (proxy HTML, an empty 401)."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def checked_envelope(
    body: Any, status: int, what: str, *, refusal_expected: bool = False
) -> Mapping[str, Any]:
    """A successful answer's JSON object (``result`` true or ``"yes"``).

    A ``result`` of false or ``"no"`` is an authoritative refusal even under HTTP 200: an
    :class:`ApiError` that is never retried (unless ``refusal_expected``: the caller reads the
    refusal itself). A body that is no JSON object is retried."""
    if not isinstance(body, Mapping):
        raise TransferError(
            f"{what}: the API answered HTTP {status} without a JSON object", retryable=True
        )
    result = body.get("result")
    if not is_true(result) and not refusal_expected:
        if "result" not in body:
            text = f"unrecognised answer (no result; keys: {', '.join(map(str, body))})"
        else:
            text = error_text(body) or f"the API answered result {result!r}"
        raise ApiError(status, f"{what}: {text}")
    return body

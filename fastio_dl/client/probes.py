"""``doctor``'s requests: one GET each, no retry, and what came back as it came back.

A :class:`Probe` keeps the answer as it came; what ``doctor`` reports of it (key names, shapes,
where a listing keeps its children, the node a details answer names) is read here, so that no
raw answer leaves the client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp

from fastio_dl.client.answers import (
    ListingPage,
    decoded,
    error_text,
    parse_listing,
    parse_node,
    payload_of,
    shape_of,
)
from fastio_dl.client.reads import origin_of
from fastio_dl.client.retries import describe_network_error
from fastio_dl.client.session import ApiSession
from fastio_dl.models import Node


@dataclass
class Probe:
    """One request as ``doctor`` reports it: what came back, nothing interpreted."""

    status: int | None
    headers: dict[str, str]
    body: Any  # the JSON answer, or None
    size: int  # bytes of the body read
    seconds: float
    tls: str | None  # the TLS version, None on plain HTTP
    redirects: list[tuple[int, bool]]  # (status, to another origin) for each hop followed
    error: str | None = None  # the request did not complete (connection, TLS, timeout)

    def is_object(self) -> bool:
        """The answer is a JSON object."""
        return isinstance(self.body, Mapping)

    def keys(self) -> list[str]:
        """The answer's top-level key names, sorted."""
        return sorted(str(k) for k in self.body) if isinstance(self.body, Mapping) else []

    def shape(self) -> Any:
        return shape_of(self.body)

    def error_text(self) -> str:
        """Why the request failed: the network's reason, or the error the answer names."""
        return self.error or error_text(self.body) or ""


async def probe(
    client: ApiSession,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    bearer: bool = True,
    limit: int = 1 << 20,
) -> Probe:
    """GET ``url`` once, no retry, and keep what ``doctor`` shows (at most ``limit`` bytes)."""
    sent = dict(headers or {})
    if bearer and client.auth.token:
        sent["Authorization"] = f"Bearer {client.auth.token}"
    started = time.monotonic()
    try:
        async with client._session.get(
            url, params=params, headers=sent, proxy=client._proxy, auto_decompress=False
        ) as resp:
            transport = resp.connection.transport if resp.connection else None
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            raw = await resp.content.read(limit)
            origin = origin_of(url)
            hops = [
                (r.status, origin_of(str(r.headers.get("Location", url))) != origin)
                for r in resp.history
            ]
            return Probe(
                resp.status,
                dict(resp.headers),
                decoded(raw),
                len(raw),
                time.monotonic() - started,
                ssl_object.version() if ssl_object is not None else None,
                hops,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Probe(
            None,
            {},
            None,
            0,
            time.monotonic() - started,
            None,
            [],
            client.redact(describe_network_error(exc)),
        )


class TokenUser(NamedTuple):
    id: str
    email: str | None


def token_user(answer: Probe) -> TokenUser | None:
    """The user a token check's answer names; None if it names none."""
    user = payload_of(answer.body).get("user") if isinstance(answer.body, Mapping) else None
    if not isinstance(user, Mapping):
        return None
    email = user.get("email_address") or user.get("email")
    return TokenUser(str(user.get("id")), str(email) if email else None)


def details_node(answer: Probe, *, fileshare: bool) -> tuple[Node, list[str]] | None:
    """The node a details answer (a File Share's: ``fileshare.file``) names, with the key names
    its object had; None if the answer names none."""
    if not isinstance(answer.body, Mapping):
        return None
    payload = payload_of(answer.body)
    raw: Any = None
    if fileshare:
        share = payload.get("fileshare")
        raw = share.get("file") if isinstance(share, Mapping) else None
    elif isinstance(payload.get("node"), Mapping):
        raw = payload["node"]
    else:
        nodes = payload.get("nodes")
        raw = nodes[0] if isinstance(nodes, list) and nodes else None
    if not isinstance(raw, Mapping):
        return None
    return parse_node(raw), sorted(map(str, raw))


def listing_page(answer: Probe, page_size: int) -> ListingPage:
    """The answer read as the client reads a listing page (ValueError: not understood)."""
    return parse_listing(payload_of(answer.body), None, page_size)


@dataclass(frozen=True)
class ListingLayout:
    children: str | None  # e.g. "nodes.items"
    cursor: str | None  # e.g. "next_cursor, pagination.next_cursor"
    variant: str  # the emulator's name for this list shape, or "unknown"


def listing_layout(answer: Probe) -> ListingLayout:
    """Where a listing answer keeps its children and its cursor, and which of the known list
    shapes (the emulator's LIST_SHAPES) it is."""
    body = answer.body
    if not isinstance(body, Mapping):
        return ListingLayout(None, None, "unknown")
    wrapped = isinstance(body.get("response"), Mapping)
    payload: Mapping[str, Any] = body["response"] if wrapped else body
    prefix = "response." if wrapped else ""
    key = next((k for k in ("nodes", "items", "files") if k in payload), None)
    children = None
    nested = False
    if key is not None:
        value = payload[key]
        inner = next(
            (k for k in ("items", "nodes", "files") if isinstance(value, Mapping) and k in value),
            None,
        )
        nested = inner is not None
        children = f"{prefix}{key}.{inner}" if inner else f"{prefix}{key}"
    pagination = payload.get("pagination")
    paging = pagination if isinstance(pagination, Mapping) else {}
    cursors = [k for k in ("next_cursor", "nextCursor") if k in payload]
    cursors += [f"pagination.{k}" for k in ("next_cursor", "nextCursor") if k in paging]
    elsewhere = [
        k
        for k in payload
        if k not in ("nodes", "items", "files", "pagination", "next_cursor", "nextCursor")
        and any(w in k.lower() for w in ("cursor", "continuation", "next"))
    ]
    cursor = ", ".join(prefix + c for c in cursors) or None
    if key is None:
        lists = any(isinstance(v, list) for v in payload.values())
        variant = "unknown_key" if lists else "unknown"
    elif wrapped:
        variant = "wrapped"
    elif nested:
        variant = "choice"
    elif key in ("items", "files"):
        variant = key
    elif isinstance(payload[key], Mapping):
        variant = "id_keyed"
    elif not cursors and elsewhere:
        variant = "cursor_elsewhere"
        cursor = ", ".join(f"{k} (a key fastio-dl does not read)" for k in elsewhere)
    elif not cursors and "has_more" in paging:
        variant = "has_more_no_cursor"
    else:
        variant = "array"
    return ListingLayout(children, cursor, variant)

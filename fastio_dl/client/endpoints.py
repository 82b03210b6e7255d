"""FastioClient: the endpoints fastio-dl calls (details, list, versions, readnote, File Share
details, requestread, read), each answer read strictly (fastio-api.md section 4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from fastio_dl.client.answers import (
    LIST_PAGE_SIZE,
    decoded,
    details_nodes,
    error_text,
    is_true,
    norm_id,
    parse_listing,
    parse_node,
    parse_version,
    payload_of,
    shape_of,
)
from fastio_dl.client.lean import LeanAnswer
from fastio_dl.client.reads import ReadStream, origin_of
from fastio_dl.client.retries import map_http_error, network_error
from fastio_dl.client.session import ApiSession
from fastio_dl.errors import (
    AccessError,
    ApiError,
    AuthError,
    ListingError,
    PaymentRequiredError,
    TransferError,
)
from fastio_dl.models import Node, Version

BULK_DETAILS_MAX = 25
MAX_REDIRECTS = 5
LIST_PAGES_MAX = 100_000  # 50 million children: a server that never ends a listing is stopped


class FastioClient(ApiSession):
    """The API as fastio-dl uses it: one per run (:meth:`ApiSession.open`)."""

    # -- endpoints
    async def details(
        self, context: str, context_id: str, node_ids: list[str]
    ) -> tuple[list[Node], dict[str, str]]:
        """Details of 1-25 nodes: (nodes, {node_id: error}) for the ones that did not resolve."""
        if not 1 <= len(node_ids) <= BULK_DETAILS_MAX:
            raise ValueError("details takes 1 to 25 ids")
        url = self._url(context, context_id, ",".join(node_ids), "details")
        body = await self._get_json(url, "node details", accept_statuses=frozenset({404}))
        payload = payload_of(body)
        nodes = details_nodes(payload)
        if nodes is None:
            if is_true(body.get("result")):
                raise ApiError(
                    200,
                    "node details: unrecognised answer "
                    f"(keys: {', '.join(sorted(map(str, payload)))})",
                )
            nodes = []
        errors: dict[str, str] = {}
        for entry in payload.get("errors") or []:
            if isinstance(entry, Mapping) and entry.get("node_id"):
                errors[norm_id(str(entry["node_id"]))] = str(entry.get("message") or "not found")
        found = {n.id for n in nodes}
        for node_id in node_ids:
            if norm_id(node_id) not in found and norm_id(node_id) not in errors:
                errors[norm_id(node_id)] = error_text(body) or "not found"
        return nodes, errors

    async def list_folder(
        self, context: str, context_id: str, folder: str
    ) -> AsyncIterator[list[Node]]:
        """Yield pages of child nodes until a page that is provably the last.

        Raises :class:`ListingError` for an answer not understood, or one that does not prove
        the folder's end: the caller must never take what it got so far for the whole folder.
        """
        url = self._url(context, context_id, folder, "list")
        what = f"listing {folder}"
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(LIST_PAGES_MAX):
            params = {"page_size": str(LIST_PAGE_SIZE), "sort_by": "name", "sort_dir": "asc"}
            if cursor:
                params["cursor"] = cursor
            body = await self._get_json(url, what, params)
            payload = payload_of(body)
            try:
                page = parse_listing(payload, cursor)
            except ValueError as exc:
                raise self._listing_error(what, str(exc), body) from None
            yield page.items
            if page.cursor is None:
                return
            if page.cursor in seen:
                raise self._listing_error(
                    what, f"the server sent cursor {page.cursor!r} a second time (a loop)", body
                )
            seen.add(page.cursor)
            cursor = page.cursor
        raise ListingError(f"{what}: more than {LIST_PAGES_MAX} pages; stopped")

    def _listing_error(self, what: str, why: str, body: Any) -> ListingError:
        message = f"{what}: {why}"
        if self._settings.debug:
            message += f"; answer shape: {json.dumps(shape_of(body))}"
        return ListingError(
            message,
            "the API answered in a shape fastio-dl does not know; run with --debug to see it "
            "and report it",
        )

    async def versions(self, context: str, context_id: str, node: str) -> list[Version]:
        """A file's versions, as the API lists them (``fileshare``: the shared file's)."""
        if context == "fileshare":
            url = f"{self._base}/fileshare/{context_id}/storage/versions/"
            body = await self._get_json(url, "versions", fileshare=True)
        else:
            body = await self._get_json(
                self._url(context, context_id, node, "versions"), "versions"
            )
        versions = payload_of(body).get("versions")
        if not isinstance(versions, list):
            raise TransferError(
                f"versions of {node}: unrecognised answer (no 'versions' list; keys: "
                f"{', '.join(sorted(map(str, payload_of(body)))) or 'none'})"
            )
        return [parse_version(v) for v in versions if isinstance(v, Mapping)]

    async def read_note(
        self, context: str, context_id: str, node: str, version_id: str | None = None
    ) -> str:
        """A note's markdown (``readnote``); notes have no bytes through ``read``."""
        params = {"version_id": version_id} if version_id else None
        body = await self._get_json(
            self._url(context, context_id, node, "readnote"), f"note {node}", params
        )
        content = payload_of(body).get("content")
        if not isinstance(content, str):
            raise TransferError(f"note {node}: unrecognised answer (no 'content' text)")
        return content

    async def fileshare_file(self, fileshare_id: str) -> Node:
        """The file a File Share links to: ``details`` -> ``fileshare.file`` (a node object)."""
        url = f"{self._base}/fileshare/{fileshare_id}/details/"
        what = f"File Share {fileshare_id}"
        try:
            body = await self._get_json(url, what, fileshare=True)
        except (AuthError, AccessError) as exc:
            if isinstance(exc, PaymentRequiredError):
                raise
            # A refused link says nothing about the token: this reference fails, not the run.
            hint = (
                "check the link password (FASTIO_FILESHARE_PASSWORD or --password-file)"
                if self._settings.fileshare_password
                else "a link with a password needs FASTIO_FILESHARE_PASSWORD or --password-file"
            )
            raise TransferError(f"{exc.message}; {hint}") from None
        share = payload_of(body).get("fileshare")
        file = share.get("file") if isinstance(share, Mapping) else None
        if not isinstance(file, Mapping):
            raise TransferError(f"{what}: unrecognised answer (no fileshare.file)")
        return parse_node(file)

    async def request_read(
        self, context: str, context_id: str, node: str, *, version_id: str | None = None
    ) -> str:
        # Not retried blindly by the caller's replay: each attempt mints a fresh token anyway.
        params = {"version_id": version_id} if version_id else None
        body = await self._get_json(
            self._url(context, context_id, node, "requestread"), "read token", params
        )
        token = payload_of(body).get("token")
        if not isinstance(token, str) or not token:
            raise TransferError("read token: the API answered without a token", retryable=True)
        return token

    @asynccontextmanager
    async def open_read(
        self,
        context: str,
        context_id: str,
        node: str,
        *,
        token: str | None,
        start: int = 0,
        end: int | None = None,
        version_id: str | None = None,
        whole: int | None = None,
    ) -> AsyncIterator[ReadStream]:
        """Open ``/read/`` (with ``?token=`` or the bearer header) from byte ``start``.

        ``version_id`` pins the content: a file replaced during the run is read as listed.
        The bytes are taken as they are stored (``Accept-Encoding: identity``, no
        decompression): the size and hash the API announced are those of the stored bytes.

        A File Share (``context`` ``fileshare``) reads ``/fileshare/ID/storage/read/`` (or the
        version's read path) with the optional bearer and the link password; such a read
        follows a redirect only within the same origin, since the password header goes along.

        ``whole``: a small read, of this many bytes at most; its answer is read whole before
        this yields (see :mod:`fastio_dl.client.lean`), unless the run goes through a proxy.
        """
        params: dict[str, str] = {}
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        bearer = self.auth.token
        fileshare = context == "fileshare"
        if fileshare:
            path = f"versions/{version_id}/read" if version_id else "read"
            url = f"{self._base}/fileshare/{context_id}/storage/{path}/"
            headers.update(self._fileshare_headers())
        else:
            url = self._url(context, context_id, node, "read")
            if token:
                params["token"] = token
            else:
                headers.update(self._auth_headers())
            if version_id:
                params["version_id"] = version_id
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        response: aiohttp.ClientResponse | LeanAnswer
        if whole is not None and self._lean is not None:
            if params:
                url += "?" + urlencode(params)
            response = await self._lean.get(url, headers, whole, same_origin_only=fileshare)
        else:
            try:
                response = await self._get_read(url, params, headers, same_origin_only=fileshare)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise network_error("read", exc) from exc
        try:
            if 300 <= response.status < 400:
                if fileshare and response.headers.get("Location"):
                    raise TransferError(
                        f"read: HTTP {response.status} redirect to another origin not followed "
                        "(it would carry the File Share's link password there)"
                    )
                raise TransferError(f"read: HTTP {response.status} without an address to follow")
            if response.status >= 400:
                try:
                    body: Any = decoded(await response.read())
                except (TimeoutError, aiohttp.ClientError):
                    body = None
                error = map_http_error(
                    response.status, response.headers, body, "read", on_read=True
                )
                if response.status == 401 and not token and not fileshare:
                    await self.auth.after_401(bearer, error)  # a dead API token stops the run
                if response.status == 429 and isinstance(error, ApiError):
                    # Reads may count against the API's window: API callers wait this one out
                    # too; the read's own retry waits for its hint.
                    self.gate.hold(min(self._settings.max_retry_wait, error.wait_hint or 0.0))
                raise error
            yield ReadStream(response, self._settings.stall_timeout)
        finally:
            response.release()

    async def _get_read(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        *,
        same_origin_only: bool,
    ) -> aiohttp.ClientResponse:
        """GET a read; with ``same_origin_only`` redirects are followed by hand, only within
        the first URL's origin (a 3xx elsewhere is handed back as it is)."""
        if not same_origin_only:
            return await self._session.get(
                url, params=params, headers=headers, proxy=self._proxy, auto_decompress=False
            )
        origin = origin_of(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.get(
                url,
                params=params,
                headers=headers,
                proxy=self._proxy,
                auto_decompress=False,
                allow_redirects=False,
            )
            location = response.headers.get("Location")
            if not (300 <= response.status < 400) or not location:
                return response
            target = str(response.url.join(URL(location)))
            if origin_of(target) != origin:
                return response
            response.release()
            url, params = target, {}
        raise TransferError(f"read: more than {MAX_REDIRECTS} redirects")

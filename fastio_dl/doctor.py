"""``fastio-dl doctor [REF]``: does this account and this fastio-dl understand each other?

Each check makes one request and says what came back, in order: the API base and TLS, the token
(``/user/auth/check/``), and for a reference its details, the first page of a listing (which keys
held the children and the cursor), a 1-byte ranged read, the hash algorithm and the rate-limit
headers. The JSON report keeps only shapes, key names, statuses and header names: every value
(ids, names, users, URLs, tokens) is left out, so it can be attached to a bug report as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastio_dl.client import FastioClient
from fastio_dl.client.probes import (
    Probe,
    details_node,
    listing_layout,
    listing_page,
    probe,
    token_user,
)
from fastio_dl.config import Settings
from fastio_dl.models import Node
from fastio_dl.refs import Ref

RATE_HEADERS = (
    "x-ve-limit-avail",
    "x-ve-limit-max",
    "x-ve-limit-expires",
    "X-Rate-Limit-Available",
    "X-Rate-Limit-Max",
    "X-Rate-Limit-Expiry",
    "Retry-After",
)
DOCTOR_PAGE_SIZE = 100


@dataclass
class Check:
    name: str
    ok: bool
    line: str  # for people: what was found, values included (never a token)
    report: dict[str, Any] = field(default_factory=dict)  # for the JSON: no values


@dataclass
class Doctor:
    client: FastioClient
    settings: Settings
    checks: list[Check] = field(default_factory=list)
    _last_api: Probe | None = None

    def add(self, name: str, ok: bool, line: str, **report: Any) -> bool:
        self.checks.append(Check(name, ok, line, {"check": name, "ok": ok, **report}))
        return ok

    async def run(self, ref: Ref | None) -> list[Check]:
        if await self._base_and_token() and ref is not None:
            await self._reference(ref)
        return self.checks

    # ------------------------------------------------------------------ base, token
    async def _base_and_token(self) -> bool:
        base = self.settings.api_base
        source = self.settings.sources.get("api_base", "default")
        answer = await probe(self.client, f"{base}/user/auth/check/")
        self._last_api = answer
        if answer.error is not None:
            return self.add(
                "api_base",
                False,
                f"api base: {base} ({source}): {answer.error}",
                error=True,
            )
        tls = f"TLS {answer.tls}, certificate verified" if answer.tls else "plain HTTP, no TLS"
        self.add(
            "api_base",
            True,
            f"api base: {base} ({source}): answered in {answer.seconds * 1000:.0f} ms; {tls}",
            tls=answer.tls is not None,
            http_status=answer.status,
        )
        token_source = self.settings.sources.get("token", "unset")
        login = self.client.login
        expiry = f"; {login.describe()}" if login is not None else ""
        report = {"http_status": answer.status, "keys": answer.keys(), "shape": answer.shape()}
        if self.settings.token is None:
            return self.add("token", False, "token: none (see README: Tokens and profiles)")
        if answer.status != 200 or not answer.is_object():
            why = answer.error_text()
            return self.add(
                "token",
                False,
                f"token: from {token_source}{expiry}: refused, HTTP {answer.status} {why}",
                **report,
            )
        user = token_user(answer)
        who = "an unrecognised answer"
        if user is not None:
            who = f"user {user.id}" + (f" ({user.email})" if user.email else "")
        return self.add(
            "token", user is not None, f"token: from {token_source}{expiry}: {who}", **report
        )

    # ------------------------------------------------------------------ a reference
    async def _reference(self, ref: Ref) -> None:
        if ref.context == "fileshare":
            url = f"{self.client_base}/fileshare/{ref.context_id}/details/"
        else:
            url = f"{self.client_base}/{ref.context}/{ref.context_id}/storage/{ref.node}/details/"
        answer = await self._api(url)
        found = details_node(answer, fileshare=ref.context == "fileshare")
        report = {"http_status": answer.status, "keys": answer.keys(), "shape": answer.shape()}
        if answer.status != 200 or found is None:
            self.add(
                "details",
                False,
                f"details: HTTP {answer.status} {answer.error_text()}".rstrip(),
                **report,
            )
            return
        node, node_keys = found
        kind = node.kind
        self.add(
            "details",
            True,
            f"details: HTTP {answer.status}, a {kind} named {node.name!r}; node keys: "
            + ", ".join(node_keys),
            **report,
            node_keys=node_keys,
        )
        file_node = node if kind == "file" else None
        if ref.context != "fileshare":
            folder = ref.node if kind == "folder" else node.parent or ""
            if folder:
                child = await self._listing(ref, folder)
                file_node = file_node or child
        if file_node is not None:
            await self._read(ref, file_node)
            self._hash(file_node)
        else:
            self.add("read", False, "read: no file to try (the folder's first page has none)")
        self._rate_limits()

    @property
    def client_base(self) -> str:
        return self.settings.api_base.rstrip("/")

    async def _api(self, url: str, params: Mapping[str, str] | None = None) -> Probe:
        answer = await probe(self.client, url, params=params, headers=self._fileshare_headers(url))
        self._last_api = answer
        return answer

    def _fileshare_headers(self, url: str) -> dict[str, str]:
        password = self.settings.fileshare_password
        return {"x-ve-password": str(password)} if password and "/fileshare/" in url else {}

    async def _listing(self, ref: Ref, folder: str) -> Node | None:
        url = f"{self.client_base}/{ref.context}/{ref.context_id}/storage/{folder}/list/"
        params = {"page_size": str(DOCTOR_PAGE_SIZE), "sort_by": "name", "sort_dir": "asc"}
        answer = await self._api(url, params)
        layout = listing_layout(answer)
        report = {
            "http_status": answer.status,
            "keys": answer.keys(),
            "shape": answer.shape(),
            "children_under": layout.children,
            "cursor_under": layout.cursor,
            "variant": layout.variant,
        }
        if answer.status != 200 or not answer.is_object():
            self.add("listing", False, f"listing: HTTP {answer.status} {answer.error_text()}")
            return None
        try:
            page = listing_page(answer, DOCTOR_PAGE_SIZE)
        except ValueError as exc:
            self.add(
                "listing",
                False,
                f"listing: not understood ({exc}); children under {layout.children or 'no key'}, "
                f"cursor under {layout.cursor or 'no key'} (looks like {layout.variant!r})",
                understood=False,
                **report,
            )
            return None
        more = "a next page" if page.cursor else "the last page"
        self.add(
            "listing",
            True,
            f"listing: HTTP {answer.status}, {len(page.items)} children under "
            f"{layout.children}, cursor under {layout.cursor or 'no key'} ({more}); "
            f"shape {layout.variant!r}",
            understood=True,
            **report,
        )
        return next((n for n in page.items if n.kind == "file"), None)

    async def _read(self, ref: Ref, node: Node) -> None:
        node_id = node.id
        if ref.context == "fileshare":
            url = f"{self.client_base}/fileshare/{ref.context_id}/storage/read/"
        else:
            url = f"{self.client_base}/{ref.context}/{ref.context_id}/storage/{node_id}/read/"
        headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
        headers.update(self._fileshare_headers(url))
        answer = await probe(self.client, url, headers=headers, limit=64)
        names = sorted(answer.headers)
        redirect = (
            "none"
            if not answer.redirects
            else ", ".join(
                f"{s} to {'another' if o else 'the same'} origin" for s, o in answer.redirects
            )
        )
        content_range = answer.headers.get("Content-Range")
        ok = answer.status == 206 and content_range is not None and answer.size == 1
        line = (
            f"read: 1-byte ranged read answered HTTP {answer.status}"
            + (f" ({answer.error})" if answer.error else "")
            + f", Content-Range {content_range or 'absent'}, Accept-Ranges "
            + f"{answer.headers.get('Accept-Ranges', 'absent')}, {answer.size} byte(s); "
            + f"redirect: {redirect}"
        )
        if answer.status == 200:
            line += "; the server ignores Range (resume restarts from zero)"
            ok = True
        elif answer.status in (401, 403) and ref.context != "fileshare":
            line += "; a bearer read was refused: fastio-dl then mints a read token (auto mode)"
        self.add(
            "read",
            ok,
            line,
            http_status=answer.status,
            header_names=names,
            content_range=content_range is not None,
            redirects=[{"status": s, "other_origin": o} for s, o in answer.redirects],
        )

    def _hash(self, node: Node) -> None:
        algo = node.hash_algo or ""
        has_hash = node.hash is not None
        known = algo in hashlib.algorithms_available
        if not has_hash:
            line, ok = "hash: none given: files are checked by size only (with a warning)", False
        elif not known:
            line, ok = f"hash: {algo or 'no algorithm named'}: unknown here, size check only", False
        else:
            line, ok = f"hash: {algo}: files are verified", True
        self.add("hash", ok, line, algorithm=algo or None, has_hash=has_hash, verifiable=ok)

    def _rate_limits(self) -> None:
        headers = self._last_api.headers if self._last_api else {}
        lower = {k.lower(): (k, v) for k, v in headers.items()}
        found = {name: lower[name.lower()] for name in RATE_HEADERS if name.lower() in lower}
        if not found:
            self.add("rate_limit", True, "rate limit: no rate-limit headers on the last API answer")
            return
        values = ", ".join(f"{key} {value}" for key, value in found.values())
        expires = lower.get("x-ve-limit-expires")
        if expires:
            with contextlib.suppress(ValueError):
                values += f" (resets in {float(expires[1]) - time.time():.0f} s)"
        self.add(
            "rate_limit",
            True,
            f"rate limit: {values}",
            header_names=[key for key, _value in found.values()],
        )


_ID_LIKE = re.compile(r"[A-Za-z0-9-]{20,40}|\d{19}")


def scrubbed(report: Any) -> Any:
    """A report with any key that is an id (an id-keyed listing's children) replaced: only
    key names the API defines stay."""
    if isinstance(report, Mapping):
        return {
            ("<id>" if _ID_LIKE.fullmatch(str(k)) else str(k)): scrubbed(v)
            for k, v in report.items()
        }
    if isinstance(report, list):
        return [scrubbed(item) for item in report]
    return report

"""A real aiohttp server that speaks the Fast.io API contract, with switches for every fault.

Bound to 127.0.0.1 only. Used by the tests, the demo, the benchmarks, and anyone who wants to
try fastio-dl offline.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from fastio_dl.emulator.data import Blob, FileShare, Node, Space, Store

HOST = "127.0.0.1"
DEFAULT_TOKEN = "fastio-emulator-token"
READ_TOKEN_TTL = 2 * 3600
OAUTH_TOKEN_TTL = 3600  # what the live API gives an OAuth access token
OAUTH_CLIENT_ID = "fastio-cli"
PASSWORD_HEADER = "x-ve-password"
BODY_CHUNK = 256 * 1024
PREFIXES = ("/current", "/v1.0")
T = TypeVar("T")

FAULT_KINDS = (
    "rate_limit",  # 429; retry_after None -> no body hint (headers only)
    "server_error",  # 5xx burst (status)
    "drop",  # close the connection after after_bytes of the body
    "stall",  # stop sending for `seconds` after after_bytes
    "wrong_bytes",  # flip a byte at after_bytes (hash check must fail)
    "expire_token",  # 401 on a ?token= read
    "long_length",  # Content-Length longer than the body, then close
    "ignore_range",  # answer 200 with the full body to a Range request
    "payment",  # 402 out of credits
    "shift_range",  # answer a Range request with a Content-Range that starts at 0
)


@dataclass
class Fault:
    kind: str
    endpoint: str = "read"  # read | api | any
    times: int | None = None  # how many times it fires; None: every time (with probability)
    probability: float = 1.0
    after_bytes: int = 0
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = 0.0
    min_size: int = 0  # only reads of files at least this large

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``kind[:key=value,...]``, e.g. ``drop:after_bytes=1000,times=3,probability=0.5``."""
        kind, _, rest = text.partition(":")
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        aliases = {"after": "after_bytes", "p": "probability", "n": "times"}
        for pair in filter(None, rest.split(",")):
            key, _, value = pair.partition("=")
            key = aliases.get(key.strip(), key.strip())
            if key not in types:
                raise ValueError(f"unknown fault option {key!r}")
            if value.lower() in ("none", ""):
                kwargs[key] = None
            elif key in ("times", "after_bytes", "status", "min_size"):
                kwargs[key] = int(value)
            elif key in ("probability", "seconds", "retry_after"):
                kwargs[key] = float(value)
            else:
                kwargs[key] = value
        return cls(kind=kind.strip(), **kwargs)


# Shapes a folder listing may take (fastio-api.md section 4 and 7). "choice" is the contract's
# CHOICE; the client must read "array" to "id_keyed", and must fail loudly on the others.
LIST_SHAPES = (
    "choice",  # {nodes: {items, count}, next_cursor, pagination: {page_size, has_more, ...}}
    "array",  # {nodes: [...], next_cursor}
    "items",  # {items: [...], pagination: {has_more, next_cursor}}
    "files",  # {files: [...], next_cursor}
    "wrapped",  # {response: {nodes: [...], next_cursor}}
    "id_keyed",  # {nodes: {ID: node, ...}, next_cursor}; an empty folder: [] (PHP's json_encode)
    "unknown_key",  # {data: [...], next_cursor}: children under a key nobody reads
    "cursor_elsewhere",  # {nodes: [...], continuation: C}: the cursor under another key
    "has_more_no_cursor",  # {nodes: [...], pagination: {has_more}}: no cursor at all
)
READ_ENDPOINTS = ("details", "list", "requestread", "read")


@dataclass
class Refusal:
    """Answer ``status`` with error ``code`` on some endpoints of a space, or of one node.

    401 10545 (not a member), 401 115069 (not shared with you), 403 (restricted, scope), or
    402 on ``requestread``: the refusals the real API may give one workspace or file while the
    token itself is fine.
    """

    status: int
    code: int
    text: str = "Access denied"
    endpoints: tuple[str, ...] = READ_ENDPOINTS
    space: str | None = None  # a space id or name; None: every space
    node: str | None = None  # a node id (folder for list, file for reads); None: every node
    times: int | None = None  # how many times it fires; None: every time
    after: int = 0  # let this many matching requests through first (a refusal mid-run)

    def matches(self, endpoint: str, space: Space, node_ids: list[str]) -> bool:
        if endpoint not in self.endpoints or self.times == 0:
            return False
        if self.space is not None and self.space not in (space.id, space.name):
            return False
        return self.node is None or _norm(self.node) in node_ids


@dataclass
class Switches:
    latency: float = 0.0  # seconds added to every request
    bandwidth: int = 0  # bytes per second per read (0: unlimited)
    range_enabled: bool = True
    bearer_reads: bool = True  # False: /read/ refuses the API token, wants ?token=
    bearer_refusal_status: int = 401
    redirect_reads_to: str | None = None  # base URL of another origin: /read/ answers 307 there
    faults: list[Fault] = field(default_factory=list)
    seed: int = 7
    list_shape: str = "choice"  # one of LIST_SHAPES
    list_page_size: int = 0  # the server's own page size (0: the page_size asked for)
    yes_no: bool = False  # envelopes say result "yes"/"no" instead of true/false
    refusals: list[Refusal] = field(default_factory=list)
    rate_window: int = 0  # API requests per window (0: no limit); x-ve-limit-avail counts down
    rate_window_seconds: float = 60.0
    revoke_tokens_after: int = 0  # after this many API requests every API token dies (0: never)

    def __post_init__(self) -> None:
        if self.list_shape not in LIST_SHAPES:
            raise ValueError(f"unknown list shape {self.list_shape!r}; one of {LIST_SHAPES}")


class Emulator:
    """State, counters and the aiohttp application."""

    def __init__(
        self, store: Store, switches: Switches | None = None, tokens: set[str] | None = None
    ) -> None:
        self.store = store
        self.switches = switches or Switches()
        self.tokens = tokens if tokens is not None else {DEFAULT_TOKEN}
        self.refresh_tokens: set[str] = set()  # OAuth refresh tokens; each is good for one use
        #: token -> request count from which it is refused (a login that dies mid-run)
        self.token_deaths: dict[str, int] = {}
        self.oauth_forms: list[dict[str, str]] = []  # what each POST /oauth/token/ sent
        self.read_tokens: dict[str, tuple[str, str, str, float]] = {}
        self.counters: Counter[str] = Counter()
        self.rng = random.Random(self.switches.seed)
        #: endpoint, path, headers and arrival (time.monotonic()) of the first requests
        self.requests: list[dict[str, Any]] = []
        # One record per read and requestread: what the client asked for (version_id, encoding).
        self.reads: list[dict[str, Any]] = []
        self._window_end = 0.0  # the rate window's reset (time.time())
        self._window_left = 0
        self._sending = 0  # reads moving bytes now
        self._read_peers: set[tuple[Any, ...]] = set()  # client addresses that read
        # When the first read since the last reset arrived (time.monotonic(), the same clock in
        # every process on Linux): a benchmark tells a client's start-up from its transfer.
        self.first_read_at: float | None = None
        self.app = self._make_app()

    # ------------------------------------------------------------------ faults
    def set_faults(self, faults: list[Fault]) -> None:
        self.switches.faults = list(faults)

    def _fire(self, kind: str, endpoint: str, size: int = 0) -> Fault | None:
        for fault in self.switches.faults:
            if fault.kind != kind or (fault.times is not None and fault.times <= 0):
                continue
            if fault.endpoint not in ("any", endpoint):
                continue
            if size < fault.min_size:
                continue
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            if fault.times is not None:
                fault.times -= 1
            self.counters[f"fault:{kind}"] += 1
            return fault
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "read_tokens_live": len(self.read_tokens),
            "first_read_at": self.first_read_at,
        }

    def issue_login(self) -> tuple[str, str]:
        """An OAuth login as ``fastio auth login`` gets it: (access token, refresh token)."""
        access, refresh = "oa." + secrets.token_urlsafe(24), "rf." + secrets.token_urlsafe(24)
        self.tokens.add(access)
        self.refresh_tokens.add(refresh)
        return access, refresh

    def reset_counters(self) -> None:
        self.counters.clear()
        self.requests.clear()
        self.reads.clear()
        self._read_peers.clear()
        self.first_read_at = None

    # ------------------------------------------------------------------ app
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for prefix in PREFIXES:
            app.router.add_get(prefix + "/user/auth/check/", self.auth_check)
            base = prefix + r"/{ctx:workspace|share}/{sid}/storage/{node}/"
            app.router.add_get(base + "details/", self.details)
            app.router.add_get(base + "list/", self.list_folder)
            app.router.add_get(base + "versions/", self.versions)
            app.router.add_get(base + "requestread/", self.request_read)
            app.router.add_get(base + "read/", self.read)
            app.router.add_get(base + "readnote/", self.read_note)
            app.router.add_post(prefix + "/oauth/token/", self.oauth_token)
            fileshare = prefix + "/fileshare/{fsid}/"
            app.router.add_get(fileshare + "details/", self.fileshare_details)
            app.router.add_get(fileshare + "storage/read/", self.fileshare_read)
            app.router.add_get(fileshare + "storage/versions/", self.fileshare_versions)
            app.router.add_get(fileshare + "storage/versions/{vid}/read/", self.fileshare_read)
        app.router.add_get("/_emulator/stats", self.admin_stats)
        app.router.add_post("/_emulator/faults", self.admin_faults)
        app.router.add_post("/_emulator/reset", self.admin_reset)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)  # type: ignore[no-any-return]
        response = await self._answer(request, handler)
        if self.switches.yes_no:
            _say_yes_no(response)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        endpoint = request.path.rstrip("/").rsplit("/", 1)[-1]
        if endpoint == "read" and self.first_read_at is None:
            self.first_read_at = time.monotonic()
        self.counters[endpoint] += 1
        self.counters["requests"] += 1
        if len(self.requests) < 10_000:
            self.requests.append(
                {
                    "endpoint": endpoint,
                    "path": request.path,
                    "headers": dict(request.headers),
                    "at": time.monotonic(),
                }
            )
        if endpoint in ("read", "requestread") and len(self.reads) < 200_000:
            self.reads.append(
                {
                    "endpoint": endpoint,
                    "node": request.match_info.get("node", "").replace("-", "").lower(),
                    "version_id": request.query.get("version_id"),
                    "accept_encoding": request.headers.get("Accept-Encoding"),
                    "token": "token" in request.query,
                    "range": request.headers.get("Range"),
                }
            )
        if self.switches.latency:
            await asyncio.sleep(self.switches.latency)
        kind = "read" if endpoint == "read" else "api"
        if kind == "api" and self.switches.revoke_tokens_after:
            self.counters["api_requests"] += 1
            if self.counters["api_requests"] > self.switches.revoke_tokens_after:
                self.tokens.clear()
        limits: dict[str, str] = {}
        if kind == "api" and self.switches.rate_window:
            now = time.time()
            if now >= self._window_end:
                self._window_end = now + self.switches.rate_window_seconds
                self._window_left = self.switches.rate_window
            limits = {
                "x-ve-limit-max": str(self.switches.rate_window),
                "x-ve-limit-expires": f"{self._window_end:.3f}",
            }
            if self._window_left <= 0:
                self.counters["status:429"] += 1
                self.counters["rate_window_refused"] += 1
                wait = round(self._window_end - now, 3)
                return _error(
                    429,
                    145858,
                    "Rate Limited",
                    params={"retry_after_seconds": wait},
                    headers={**limits, "x-ve-limit-avail": "0"},
                )
            self._window_left -= 1
            limits["x-ve-limit-avail"] = str(self._window_left)
        fault = self._fire("rate_limit", kind)
        if fault is not None:
            self.counters["status:429"] += 1
            params = {} if fault.retry_after is None else {"retry_after_seconds": fault.retry_after}
            headers = {
                "x-ve-limit-avail": "0",
                "x-ve-limit-max": "100",
                "x-ve-limit-expires": str(math.ceil(time.time() + fault.seconds)),
            }
            return _error(429, 145858, "Rate Limited", params=params, headers=headers)
        fault = self._fire("server_error", kind)
        if fault is not None:
            self.counters[f"status:{fault.status}"] += 1
            return web.Response(
                status=fault.status,
                text="<html>upstream unavailable</html>",
                content_type="text/html",
                # The window's reset rides on every answer: no wait hint for a 5xx.
                headers={"x-ve-limit-expires": str(int(time.time()) + 60)},
            )
        fault = self._fire("payment", kind)
        if fault is not None:
            return _error(402, 1402, "Payment Required")
        refused = self._refusal(request, endpoint)
        if refused is not None:
            self.counters[f"refused:{endpoint}"] += 1
            self.counters[f"status:{refused.status}"] += 1
            return _error(refused.status, refused.code, refused.text)
        response = await handler(request)
        self.counters[f"status:{response.status}"] += 1
        if kind == "api":
            response.headers.update(
                limits
                or {
                    "x-ve-limit-avail": "1000",
                    "x-ve-limit-max": "1000",
                    "x-ve-limit-expires": str(int(time.time()) + 60),
                }
            )
        return response  # type: ignore[no-any-return]

    def _refusal(self, request: web.Request, endpoint: str) -> Refusal | None:
        """The first refusal for this request; a bulk details request is refused only when
        every id is (the others are answered, the refused ones listed in ``errors``)."""
        if not self.switches.refusals or endpoint not in READ_ENDPOINTS:
            return None
        info = request.match_info
        space = self.store.find(info.get("ctx", ""), info.get("sid", ""))
        if space is None:
            return None
        ids = [_norm(i) for i in info.get("node", "").split(",")]
        for refusal in self.switches.refusals:
            if refusal.matches(endpoint, space, ids) and (refusal.node is None or len(ids) == 1):
                if refusal.after > 0:
                    refusal.after -= 1
                    continue
                if refusal.times is not None:
                    refusal.times -= 1
                return refusal
        return None

    def _refused_node(self, space: Space, node_id: str) -> Refusal | None:
        for refusal in self.switches.refusals:
            if refusal.node is not None and refusal.matches("details", space, [_norm(node_id)]):
                return refusal
        return None

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        due = self.token_deaths.get(token) if token else None
        if due is not None and self.counters["requests"] >= due:
            self.tokens.discard(token)
        if token is not None and token in self.tokens:
            return None
        return _error(401, 10011, "Authentication required" if not header else "Invalid token")

    def _space(self, request: web.Request) -> Space | web.Response:
        kind = request.match_info["ctx"]
        space = self.store.find(kind, request.match_info["sid"])
        if space is None:
            return _error(404, 1404, f"{kind} not found")
        return space

    @staticmethod
    def _node(space: Space, raw: str) -> Node | None:
        key = raw.lower().replace("-", "")
        return space.nodes.get(key)

    # ------------------------------------------------------------------ endpoints
    async def auth_check(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied:
            return denied
        return _ok(
            {"user": {"id": "1234567890123456789", "email_address": "emulator@example.invalid"}}
        )

    def _storage_node(self, request: web.Request) -> tuple[Space, Node | None] | web.Response:
        """The space and node (None: no such node) a storage call names, once its token passed;
        else the refusal to send."""
        denied = self._auth(request)
        if denied:
            return denied
        space = self._space(request)
        if isinstance(space, web.Response):
            return space
        return space, self._node(space, request.match_info["node"])

    async def details(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied:
            return denied
        space = self._space(request)
        if isinstance(space, web.Response):
            return space
        raw = request.match_info["node"]
        ids = raw.split(",")
        if len(ids) > 25:
            return _error(400, 1400, "At most 25 node ids per request")
        if len(ids) == 1:
            node = self._node(space, ids[0])
            if node is None:
                return _error(404, 1404, "Node not found")
            return _ok({"format": "single", "node": node.to_json()})
        nodes, errors = [], []
        for node_id in ids:
            node = self._node(space, node_id)
            refused = self._refused_node(space, node_id)
            if refused is not None:
                errors.append({"node_id": node_id, "code": refused.code, "message": refused.text})
            elif node is None:
                errors.append({"node_id": node_id, "code": 1404, "message": "Node not found"})
            else:
                nodes.append(node.to_json())
        self.rng.shuffle(nodes)  # the contract says order is not preserved
        body = {"result": bool(nodes), "format": "multi", "nodes": nodes, "errors": errors}
        return web.json_response(body, status=200 if nodes else 404)

    async def list_folder(self, request: web.Request) -> web.Response:
        found = self._storage_node(request)
        if isinstance(found, web.Response):
            return found
        space, node = found
        if node is None or node.type != "folder":
            return _error(404, 1404, "Folder not found")
        try:
            page_size = int(request.query.get("page_size", "100"))
        except ValueError:
            page_size = 0
        if page_size not in (100, 250, 500):
            return _error(400, 1400, "page_size must be 100, 250 or 500")
        children = sorted(
            (space.nodes[c] for c in space.children[node.id]), key=lambda n: (n.name, n.id)
        )
        cursor = request.query.get("cursor")
        start = 0
        if cursor:
            try:
                start = int(cursor, 16)
            except ValueError:
                return _error(400, 1400, "bad cursor")
        size = self.switches.list_page_size or page_size
        page = children[start : start + size]
        more = start + size < len(children)
        next_cursor = format(start + size, "x") if more else None
        return _ok(
            _list_payload(
                self.switches.list_shape, [c.to_json() for c in page], more, size, next_cursor
            )
        )

    async def versions(self, request: web.Request) -> web.Response:
        found = self._storage_node(request)
        if isinstance(found, web.Response):
            return found
        _, node = found
        if node is None or node.type != "file":
            return _error(404, 1404, "File not found")
        return _ok({"versions": _versions(node)})

    async def read_note(self, request: web.Request) -> web.Response:
        found = self._storage_node(request)
        if isinstance(found, web.Response):
            return found
        _, node = found
        if node is None:
            return _error(404, 1404, "Node not found")
        if node.type != "note":
            return _error(400, 1400, f"A {node.type} is not a note")
        text = node.note_text
        version_id = request.query.get("version_id")
        if version_id:
            match = [v for v in node.versions if v.id == version_id]
            if not match:
                return _error(404, 1404, "Version not found")
            text = bytes(match[0].blob.read(0, match[0].blob.size)).decode()
        return _ok({"content": text, "note": node.to_json()})

    async def oauth_token(self, request: web.Request) -> web.Response:
        """``POST /oauth/token/`` (form): a refresh token buys a new access token and a new
        refresh token; the old refresh token is spent (rotation, as careful servers do)."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.oauth_forms.append(form)
        refresh = form.get("refresh_token", "")
        if form.get("grant_type") != "refresh_token" or form.get("client_id") != OAUTH_CLIENT_ID:
            return web.json_response(
                {"error": "invalid_request", "error_description": "unsupported grant or client"},
                status=400,
            )
        if refresh not in self.refresh_tokens:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "refresh token unknown or spent"},
                status=400,
            )
        self.refresh_tokens.discard(refresh)
        access, new_refresh = self.issue_login()
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": OAUTH_TOKEN_TTL,
                "refresh_token": new_refresh,
            }
        )

    def _fileshare(self, request: web.Request) -> FileShare | web.Response:
        share = self.store.fileshares.get(request.match_info["fsid"])
        if share is None or share.node_id not in share.space.nodes:
            return _error(404, 1404, "File Share not found")
        if not share.anonymous:
            denied = self._auth(request)
            if denied:
                return denied
        elif request.headers.get("Authorization"):
            denied = self._auth(request)  # a token that is sent must still be a valid one
            if denied:
                return denied
        if share.password is not None:
            given = request.headers.get(PASSWORD_HEADER)
            if given != share.password:
                self.counters["fileshare_password_refused"] += 1
                return _error(
                    401, 1650, "This link needs a password" if not given else "Wrong password"
                )
        return share

    async def fileshare_details(self, request: web.Request) -> web.Response:
        share = self._fileshare(request)
        if isinstance(share, web.Response):
            return share
        return _ok(
            {
                "fileshare": {
                    "fileshare": share.id,
                    "file": share.node.to_json(),
                    "effective_capability": "download",
                    "password_protected": share.password is not None,
                }
            }
        )

    async def fileshare_versions(self, request: web.Request) -> web.Response:
        share = self._fileshare(request)
        if isinstance(share, web.Response):
            return share
        return _ok({"versions": _versions(share.node)})

    async def fileshare_read(self, request: web.Request) -> web.StreamResponse:
        if self.switches.redirect_reads_to:
            location = self.switches.redirect_reads_to.rstrip("/") + request.path
            return web.Response(status=307, headers={"Location": location})
        share = self._fileshare(request)
        if isinstance(share, web.Response):
            return share
        node = share.node
        blob = node.blob
        version_id = request.match_info.get("vid")
        if version_id:
            match = [v for v in node.versions if v.id == version_id]
            if not match:
                return _error(404, 1404, "Version not found")
            blob = match[0].blob
        if blob is None:
            return _error(400, 1400, f"A {node.type} has no bytes to read")
        self.counters["fileshare_read"] += 1
        return await self._serve(request, node, blob)

    async def request_read(self, request: web.Request) -> web.Response:
        found = self._storage_node(request)
        if isinstance(found, web.Response):
            return found
        space, node = found
        if node is None:
            return _error(404, 1404, "Node not found")
        version_id = request.query.get("version_id")
        if version_id and all(v.id != version_id for v in node.versions):
            return _error(404, 1404, "Version not found")
        token = "rt." + secrets.token_urlsafe(24)
        self.read_tokens[token] = (space.kind, space.id, node.id, time.time() + READ_TOKEN_TTL)
        self.counters["tokens_minted"] += 1
        return _ok({"token": token})

    async def read(self, request: web.Request) -> web.StreamResponse:
        if self.switches.redirect_reads_to:
            return self._redirect_read(request)
        space = self._space(request)
        if isinstance(space, web.Response):
            return space
        node = self._node(space, request.match_info["node"])
        token = request.query.get("token")
        if token:
            grant = self.read_tokens.get(token)
            valid = (
                grant is not None
                and node is not None
                and grant[:3] == (space.kind, space.id, node.id)
                and grant[3] > time.time()
            )
            if not valid or self._fire("expire_token", "read"):
                return _error(401, 10002, "Read token invalid or expired")
        else:
            denied = self._auth(request)
            if denied:
                return denied
            if not self.switches.bearer_reads:
                status = self.switches.bearer_refusal_status
                return _error(status, 10003, "Use a read token for this endpoint")
        if node is None:
            return _error(404, 1404, "Node not found")
        if node.type != "file" or node.blob is None:
            return _error(400, 1400, f"A {node.type} has no bytes to read")
        blob = node.blob
        version_id = request.query.get("version_id")
        if version_id:
            match = [v for v in node.versions if v.id == version_id]
            if not match:
                return _error(404, 1404, "Version not found")
            blob = match[0].blob
        return await self._serve(request, node, blob)

    async def _serve(self, request: web.Request, node: Node, blob: Blob) -> web.StreamResponse:
        """The bytes of ``blob`` with Range, the read faults and the bandwidth cap."""
        size = blob.size
        start, end, status = 0, size - 1, 200
        range_header = request.headers.get("Range")
        ignore = not self.switches.range_enabled or self._fire("ignore_range", "read", size)
        if range_header and not ignore:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            if start > 0 and self._fire("shift_range", "read", size):
                start = 0
        length = max(0, end - start + 1)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{_header_safe(node.name)}"',
            "ETag": f'"{blob.digest(node.hash_algo)}"',
        }
        if self.switches.range_enabled:
            headers["Accept-Ranges"] = "bytes"
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        long_length = self._fire("long_length", "read", size)
        drop = self._fire("drop", "read", size)
        stall = self._fire("stall", "read", size)
        wrong = self._fire("wrong_bytes", "read", size)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length + (1000 if long_length else 0)
        await response.prepare(request)
        # Gauges for tests: reads moving bytes at once (from the first chunk out to the end of
        # the body, at most), and the connections that read.
        flowing = False
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self._read_peers.add(tuple(peer))
            self.counters["read_connections"] = len(self._read_peers)
        try:
            sent = 0
            bandwidth = self.switches.bandwidth
            chunk = min(BODY_CHUNK, max(4096, bandwidth // 20)) if bandwidth else BODY_CHUNK
            began = time.monotonic()
            while sent < length:
                piece = min(chunk, length - sent)
                if drop is not None and sent <= drop.after_bytes:
                    piece = min(piece, drop.after_bytes - sent)
                if stall is not None and sent < stall.after_bytes:
                    piece = min(piece, stall.after_bytes - sent)
                if bandwidth:
                    # Each chunk leaves when the cap allows all bytes up to its end: no request gets
                    # bytes ahead of the cap (not its first chunk either), and nothing is left to
                    # wait for after the last one.
                    ahead = (sent + piece) / bandwidth - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                data = blob.read(start + sent, piece)
                if wrong is not None and sent <= wrong.after_bytes < sent + len(data):
                    at = wrong.after_bytes - sent
                    data = bytes(data[:at]) + bytes([data[at] ^ 0xFF]) + bytes(data[at + 1 :])
                try:
                    await response.write(data)
                    if not flowing:
                        flowing = True
                        self._sending += 1
                        self.counters["reads_sending_max"] = max(
                            self.counters["reads_sending_max"], self._sending
                        )
                except ConnectionError:
                    # The client gave up (a stall it timed out on, an interrupt): no server error.
                    self.counters["client_gone"] += 1
                    return response
                sent += len(data)
                self.counters["read_bytes"] += len(data)
                if drop is not None and sent >= drop.after_bytes:
                    return _abort(request, response)
                if stall is not None and sent == stall.after_bytes:
                    await asyncio.sleep(stall.seconds)
                    began += stall.seconds  # the cap goes on after the pause: no burst
                    stall = None
            if long_length:
                return _abort(request, response)
            await response.write_eof()
            return response
        finally:
            if flowing:
                self._sending -= 1

    def _redirect_read(self, request: web.Request) -> web.Response:
        """Answer 307 to another origin, like preview reads that go to a CDN. A bearer read gets
        a signed (token) URL there, since the client must not carry its API token across."""
        location = self.switches.redirect_reads_to.rstrip("/") + request.path  # type: ignore[union-attr]
        query = dict(request.query)
        if "token" not in query:
            denied = self._auth(request)
            space = self._space(request)
            if denied or isinstance(space, web.Response):
                return denied or space  # type: ignore[return-value]
            node = self._node(space, request.match_info["node"])
            if node is None:
                return _error(404, 1404, "Node not found")
            token = "rt." + secrets.token_urlsafe(24)
            self.read_tokens[token] = (space.kind, space.id, node.id, time.time() + READ_TOKEN_TTL)
            query["token"] = token
        return web.Response(status=307, headers={"Location": location + "?" + urlencode(query)})

    # ------------------------------------------------------------------ admin
    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def admin_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.set_faults([Fault(**item) for item in body.get("faults", [])])
        if "latency" in body:
            self.switches.latency = float(body["latency"])
        if "bandwidth" in body:
            self.switches.bandwidth = int(body["bandwidth"])
        if "range_enabled" in body:
            self.switches.range_enabled = bool(body["range_enabled"])
        if "redirect_reads_to" in body:
            # Another origin (a static server holding the same bytes): /read/ answers 307 there.
            self.switches.redirect_reads_to = body["redirect_reads_to"] or None
        return web.json_response({"faults": [asdict(f) for f in self.switches.faults]})

    async def admin_reset(self, request: web.Request) -> web.Response:
        self.reset_counters()
        return web.json_response({"ok": True})


def _versions(node: Node) -> list[dict[str, Any]]:
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


def _abort(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    # Close the socket mid-body: the client sees a broken transfer, as with a dropped link.
    if request.transport is not None:
        request.transport.abort()
    return response


def _header_safe(name: str) -> str:
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
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


def _norm(node_id: str) -> str:
    return node_id.replace("-", "").lower()


def _list_payload(
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


def _say_yes_no(response: web.StreamResponse) -> None:
    """Rewrite a JSON answer's ``result`` true/false as "yes"/"no" (both are live)."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return
    if not isinstance(response.body, bytes):
        return
    body = json.loads(response.body)
    if isinstance(body, dict) and isinstance(body.get("result"), bool):
        body["result"] = "yes" if body["result"] else "no"
        response.body = json.dumps(body).encode()


def _ok(payload: dict[str, Any]) -> web.Response:
    return web.json_response({"result": True, **payload})


def _error(
    status: int, code: int, text: str, *, params: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "text": text}
    if params is not None:
        error["params"] = params
    return web.json_response({"result": False, "error": error}, status=status, headers=headers)


# ----------------------------------------------------------------------------- running


class EmulatorThread:
    """Run an :class:`Emulator` on 127.0.0.1 in a background thread with its own event loop.

    The CLI under test calls ``asyncio.run`` itself, so the server cannot share its loop.
    """

    def __init__(
        self, emulator: Emulator, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.emulator = emulator
        self.port = port
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fastio-emulator", daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{HOST}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + "/current"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.emulator.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, HOST, self.port, ssl_context=self.ssl_context, backlog=1024
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the server's loop (safe mutation of data, faults, counters)."""
        future = asyncio.run_coroutine_threadsafe(_call(func), self.loop)
        return future.result(30)

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(func: Callable[[], T]) -> T:
    return func()

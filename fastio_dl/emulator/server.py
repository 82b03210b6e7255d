"""A real aiohttp server that speaks the Fast.io API contract, with switches for every fault.

Bound to 127.0.0.1 only. Used by the tests, the demo, the benchmarks, and anyone who wants to
try fastio-dl offline. The emulator's state, its middleware (latency, the rate window, faults and
refusals before any handler) and the helpers its handlers share live here; the handlers live in
``endpoints.py`` (JSON answers) and ``reads.py`` (bytes); ``switches.py`` says how it misbehaves,
``wire.py`` how its answers look, ``thread.py`` runs it beside a test.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from fastio_dl.emulator.data import FileShare, Node, Space, Store
from fastio_dl.emulator.endpoints import Endpoints
from fastio_dl.emulator.reads import Reads
from fastio_dl.emulator.switches import READ_ENDPOINTS, Fault, Refusal, Switches, norm_id
from fastio_dl.emulator.wire import error, say_yes_no

DEFAULT_TOKEN = "fastio-emulator-token"
PASSWORD_HEADER = "x-ve-password"
PREFIXES = ("/current", "/v1.0")


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
        self.sending = 0  # reads moving bytes now
        self.open_reads = 0  # reads whose handler has not returned (a killed client's too)
        self.read_peers: set[tuple[Any, ...]] = set()  # client addresses that read
        # When the first read since the last reset arrived (time.monotonic(), the same clock in
        # every process on Linux): a benchmark tells a client's start-up from its transfer.
        self.first_read_at: float | None = None
        # The handlers, over this state (a test may swap one, then rebuild ``app``).
        self.endpoints = Endpoints(self)
        self.reading = Reads(self)
        self.app = self._make_app()

    # ------------------------------------------------------------------ faults
    def set_faults(self, faults: list[Fault]) -> None:
        self.switches.faults = list(faults)

    def fire(self, kind: str, endpoint: str, size: int = 0) -> Fault | None:
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
        self.read_peers.clear()
        self.first_read_at = None

    # ------------------------------------------------------------------ app
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        api, reads = self.endpoints, self.reading
        for prefix in PREFIXES:
            app.router.add_get(prefix + "/user/auth/check/", api.auth_check)
            base = prefix + r"/{ctx:workspace|share}/{sid}/storage/{node}/"
            app.router.add_get(base + "details/", api.details)
            app.router.add_get(base + "list/", api.list_folder)
            app.router.add_get(base + "versions/", api.versions)
            app.router.add_get(base + "requestread/", api.request_read)
            app.router.add_get(base + "read/", reads.read)
            app.router.add_get(base + "readnote/", api.read_note)
            app.router.add_post(prefix + "/oauth/token/", api.oauth_token)
            fileshare = prefix + "/fileshare/{fsid}/"
            app.router.add_get(fileshare + "details/", api.fileshare_details)
            app.router.add_get(fileshare + "storage/read/", reads.fileshare_read)
            app.router.add_get(fileshare + "storage/versions/", api.fileshare_versions)
            app.router.add_get(fileshare + "storage/versions/{vid}/read/", reads.fileshare_read)
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
            say_yes_no(response)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        endpoint = request.path.rstrip("/").rsplit("/", 1)[-1]
        self._record(request, endpoint)
        if self.switches.latency:
            await asyncio.sleep(self.switches.latency)
        kind = "read" if endpoint == "read" else "api"
        if kind == "api" and self.switches.revoke_tokens_after:
            self.counters["api_requests"] += 1
            if self.counters["api_requests"] > self.switches.revoke_tokens_after:
                self.tokens.clear()
        limits: dict[str, str] = {}
        if kind == "api" and self.switches.rate_window:
            limits, wait = self._rate_window()
            if wait is not None:
                self.counters["status:429"] += 1
                self.counters["rate_window_refused"] += 1
                return error(
                    429,
                    145858,
                    "Rate Limited",
                    params={"retry_after_seconds": wait},
                    headers=limits,
                )
        refused = self._fault_answer(kind) or self._refused_answer(request, endpoint)
        if refused is not None:
            return refused
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

    def _record(self, request: web.Request, endpoint: str) -> None:
        """Count the request; keep the first ones, and every read's choices, for the tests."""
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
                    "node": norm_id(request.match_info.get("node", "")),
                    "version_id": request.query.get("version_id"),
                    "accept_encoding": request.headers.get("Accept-Encoding"),
                    "token": "token" in request.query,
                    "range": request.headers.get("Range"),
                }
            )

    def _rate_window(self) -> tuple[dict[str, str], float | None]:
        """Spend one API request of the window: its ``x-ve-limit-*`` headers, and the seconds
        to its reset when it was already spent (None: the request goes on)."""
        now = time.time()
        if now >= self._window_end:
            self._window_end = now + self.switches.rate_window_seconds
            self._window_left = self.switches.rate_window
        limits = {
            "x-ve-limit-max": str(self.switches.rate_window),
            "x-ve-limit-expires": f"{self._window_end:.3f}",
        }
        if self._window_left <= 0:
            return {**limits, "x-ve-limit-avail": "0"}, round(self._window_end - now, 3)
        self._window_left -= 1
        return {**limits, "x-ve-limit-avail": str(self._window_left)}, None

    def _fault_answer(self, kind: str) -> web.Response | None:
        """A 429, 5xx or 402 fault that fires for this request, answered before the handler."""
        fault = self.fire("rate_limit", kind)
        if fault is not None:
            self.counters["status:429"] += 1
            params = {} if fault.retry_after is None else {"retry_after_seconds": fault.retry_after}
            headers = {
                "x-ve-limit-avail": "0",
                "x-ve-limit-max": "100",
                "x-ve-limit-expires": str(math.ceil(time.time() + fault.seconds)),
            }
            return error(429, 145858, "Rate Limited", params=params, headers=headers)
        fault = self.fire("server_error", kind)
        if fault is not None:
            self.counters[f"status:{fault.status}"] += 1
            return web.Response(
                status=fault.status,
                text="<html>upstream unavailable</html>",
                content_type="text/html",
                # The window's reset rides on every answer: no wait hint for a 5xx.
                headers={"x-ve-limit-expires": str(int(time.time()) + 60)},
            )
        fault = self.fire("payment", kind)
        if fault is not None:
            return error(402, 1402, "Payment Required")
        return None

    def _refused_answer(self, request: web.Request, endpoint: str) -> web.Response | None:
        refused = self._refusal(request, endpoint)
        if refused is None:
            return None
        self.counters[f"refused:{endpoint}"] += 1
        self.counters[f"status:{refused.status}"] += 1
        return error(refused.status, refused.code, refused.text)

    def _refusal(self, request: web.Request, endpoint: str) -> Refusal | None:
        """The first refusal for this request; a bulk details request is refused only when
        every id is (the others are answered, the refused ones listed in ``errors``)."""
        if not self.switches.refusals or endpoint not in READ_ENDPOINTS:
            return None
        info = request.match_info
        space = self.store.find(info.get("ctx", ""), info.get("sid", ""))
        if space is None:
            return None
        ids = [norm_id(i) for i in info.get("node", "").split(",")]
        for refusal in self.switches.refusals:
            if refusal.matches(endpoint, space, ids) and (refusal.node is None or len(ids) == 1):
                if refusal.after > 0:
                    refusal.after -= 1
                    continue
                if refusal.times is not None:
                    refusal.times -= 1
                return refusal
        return None

    def refused_node(self, space: Space, node_id: str) -> Refusal | None:
        for refusal in self.switches.refusals:
            if refusal.node is not None and refusal.matches("details", space, [norm_id(node_id)]):
                return refusal
        return None

    def auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        due = self.token_deaths.get(token) if token else None
        if due is not None and self.counters["requests"] >= due:
            self.tokens.discard(token)
        if token is not None and token in self.tokens:
            return None
        return error(401, 10011, "Authentication required" if not header else "Invalid token")

    def space(self, request: web.Request) -> Space | web.Response:
        kind = request.match_info["ctx"]
        space = self.store.find(kind, request.match_info["sid"])
        if space is None:
            return error(404, 1404, f"{kind} not found")
        return space

    @staticmethod
    def node(space: Space, raw: str) -> Node | None:
        key = raw.lower().replace("-", "")
        return space.nodes.get(key)

    # ------------------------------------------------------------------ endpoints
    def storage_node(
        self, request: web.Request, kind: str | None = None
    ) -> tuple[Space, Node] | web.Response:
        """The space and node a storage call names, once its token passed; else the refusal
        to send, or the 404 for a node that does not exist (or is not a ``kind``)."""
        denied = self.auth(request)
        if denied:
            return denied
        space = self.space(request)
        if isinstance(space, web.Response):
            return space
        node = self.node(space, request.match_info["node"])
        if node is None or (kind is not None and node.type != kind):
            return error(404, 1404, f"{(kind or 'node').capitalize()} not found")
        return space, node

    def fileshare(self, request: web.Request) -> FileShare | web.Response:
        share = self.store.fileshares.get(request.match_info["fsid"])
        if share is None or share.node_id not in share.space.nodes:
            return error(404, 1404, "File Share not found")
        if not share.anonymous:
            denied = self.auth(request)
            if denied:
                return denied
        elif request.headers.get("Authorization"):
            denied = self.auth(request)  # a token that is sent must still be a valid one
            if denied:
                return denied
        if share.password is not None:
            given = request.headers.get(PASSWORD_HEADER)
            if given != share.password:
                self.counters["fileshare_password_refused"] += 1
                return error(
                    401, 1650, "This link needs a password" if not given else "Wrong password"
                )
        return share

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

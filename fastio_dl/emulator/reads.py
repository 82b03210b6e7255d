"""How the emulator serves bytes: ``/read/`` (bearer or ``?token=``), the File Share read,
Range, the read faults, the per-read bandwidth cap, and redirects to another origin."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

from aiohttp import web

from fastio_dl.emulator.data import Blob, Node
from fastio_dl.emulator.endpoints import READ_TOKEN_TTL
from fastio_dl.emulator.switches import Fault
from fastio_dl.emulator.wire import abort, error, header_safe, parse_range, version_blob

if TYPE_CHECKING:
    from fastio_dl.emulator.server import Emulator

BODY_CHUNK = 256 * 1024


class BodyFaults(NamedTuple):
    """The faults that fired for one body: where to drop, stall or flip a byte."""

    drop: Fault | None
    stall: Fault | None
    wrong: Fault | None


class Reads:
    """Read handlers over the emulator's state (``em``)."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator

    async def fileshare_read(self, request: web.Request) -> web.StreamResponse:
        if self.em.switches.redirect_reads_to:
            location = self.em.switches.redirect_reads_to.rstrip("/") + request.path
            return web.Response(status=307, headers={"Location": location})
        share = self.em.fileshare(request)
        if isinstance(share, web.Response):
            return share
        node = share.node
        blob = version_blob(node, request.match_info.get("vid"))
        if isinstance(blob, web.Response):
            return blob
        if blob is None:
            return error(400, 1400, f"A {node.type} has no bytes to read")
        self.em.counters["fileshare_read"] += 1
        return await self._serve(request, node, blob)

    async def read(self, request: web.Request) -> web.StreamResponse:
        if self.em.switches.redirect_reads_to:
            return self._redirect_read(request)
        space = self.em.space(request)
        if isinstance(space, web.Response):
            return space
        node = self.em.node(space, request.match_info["node"])
        token = request.query.get("token")
        if token:
            grant = self.em.read_tokens.get(token)
            valid = (
                grant is not None
                and node is not None
                and grant[:3] == (space.kind, space.id, node.id)
                and grant[3] > time.time()
            )
            if not valid or self.em.fire("expire_token", "read"):
                return error(401, 10002, "Read token invalid or expired")
        else:
            denied = self.em.auth(request)
            if denied:
                return denied
            if not self.em.switches.bearer_reads:
                status = self.em.switches.bearer_refusal_status
                return error(status, 10003, "Use a read token for this endpoint")
        if node is None:
            return error(404, 1404, "Node not found")
        if node.type != "file" or node.blob is None:
            return error(400, 1400, f"A {node.type} has no bytes to read")
        blob = version_blob(node, request.query.get("version_id"))
        if isinstance(blob, web.Response):
            return blob
        assert blob is not None  # a file's versions have bytes, as the file does
        return await self._serve(request, node, blob)

    async def _serve(self, request: web.Request, node: Node, blob: Blob) -> web.StreamResponse:
        """The bytes of ``blob`` with Range, the read faults and the bandwidth cap."""
        self.em.open_reads += 1  # a gauge for tests: reads whose handler has not returned
        try:
            return await self._respond(request, node, blob)
        finally:
            self.em.open_reads -= 1

    async def _respond(self, request: web.Request, node: Node, blob: Blob) -> web.StreamResponse:
        size = blob.size
        start, end, status = 0, size - 1, 200
        range_header = request.headers.get("Range")
        ignore = not self.em.switches.range_enabled or self.em.fire("ignore_range", "read", size)
        if range_header and not ignore:
            parsed = parse_range(range_header, size)
            if parsed is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            if start > 0 and self.em.fire("shift_range", "read", size):
                start = 0
        length = max(0, end - start + 1)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{header_safe(node.name)}"',
            "ETag": f'"{blob.digest(node.hash_algo)}"',
        }
        if self.em.switches.range_enabled:
            headers["Accept-Ranges"] = "bytes"
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        long_length = self.em.fire("long_length", "read", size)
        faults = BodyFaults(
            self.em.fire("drop", "read", size),
            self.em.fire("stall", "read", size),
            self.em.fire("wrong_bytes", "read", size),
        )
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length + (1000 if long_length else 0)
        await response.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:  # a gauge for tests: the connections that read
            self.em.read_peers.add(tuple(peer))
            self.em.counters["read_connections"] = len(self.em.read_peers)
        if not await self._stream(request, response, blob.read, start, length, faults):
            return response
        if long_length:
            return abort(request, response)
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        read: Callable[[int, int], bytes | memoryview],
        start: int,
        length: int,
        faults: BodyFaults,
    ) -> bool:
        """Send ``length`` bytes from ``start`` under the cap and the faults; False when the
        body ended early (a drop fault, or the client went away)."""
        drop, stall, wrong = faults
        flowing = False  # a gauge for tests: reads moving bytes at once, from first chunk to end
        try:
            sent = 0
            bandwidth = self.em.switches.bandwidth
            chunk = min(BODY_CHUNK, max(4096, bandwidth // 20)) if bandwidth else BODY_CHUNK
            began = time.monotonic()
            while sent < length:
                piece = min(chunk, length - sent)
                if drop is not None and sent <= drop.after_bytes:
                    piece = min(piece, drop.after_bytes - sent)
                if stall is not None and sent < stall.after_bytes:
                    piece = min(piece, stall.after_bytes - sent)
                if bandwidth:
                    # Each chunk leaves when the cap allows all bytes up to its end: no request
                    # gets bytes ahead of the cap (not its first chunk either), and nothing is
                    # left to wait for after the last one.
                    ahead = (sent + piece) / bandwidth - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                data = read(start + sent, piece)
                if wrong is not None and sent <= wrong.after_bytes < sent + len(data):
                    at = wrong.after_bytes - sent
                    data = bytes(data[:at]) + bytes([data[at] ^ 0xFF]) + bytes(data[at + 1 :])
                try:
                    await response.write(data)
                except ConnectionError:
                    # The client gave up (a stall it timed out on, an interrupt): no server error.
                    self.em.counters["client_gone"] += 1
                    return False
                if not flowing:
                    flowing = True
                    self.em.sending += 1
                    most = max(self.em.counters["reads_sending_max"], self.em.sending)
                    self.em.counters["reads_sending_max"] = most
                sent += len(data)
                self.em.counters["read_bytes"] += len(data)
                if drop is not None and sent >= drop.after_bytes:
                    abort(request, response)
                    return False
                if stall is not None and sent == stall.after_bytes:
                    await asyncio.sleep(stall.seconds)
                    began += stall.seconds  # the cap goes on after the pause: no burst
                    stall = None
            return True
        finally:
            if flowing:
                self.em.sending -= 1

    def _redirect_read(self, request: web.Request) -> web.Response:
        """Answer 307 to another origin, like preview reads that go to a CDN. A bearer read gets
        a signed (token) URL there, since the client must not carry its API token across."""
        location = self.em.switches.redirect_reads_to.rstrip("/") + request.path  # type: ignore[union-attr]
        query = dict(request.query)
        if "token" not in query:
            denied = self.em.auth(request)
            space = self.em.space(request)
            if denied or isinstance(space, web.Response):
                return denied or space  # type: ignore[return-value]
            node = self.em.node(space, request.match_info["node"])
            if node is None:
                return error(404, 1404, "Node not found")
            token = "rt." + secrets.token_urlsafe(24)
            self.em.read_tokens[token] = (
                space.kind,
                space.id,
                node.id,
                time.time() + READ_TOKEN_TTL,
            )
            query["token"] = token
        return web.Response(status=307, headers={"Location": location + "?" + urlencode(query)})

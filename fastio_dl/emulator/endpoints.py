"""The emulator's JSON endpoints: the token check, details, listings, versions, notes, OAuth
refresh, File Share details and versions, and read tokens."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web

from fastio_dl.emulator.wire import error, list_payload, ok, version_blob, versions_json

if TYPE_CHECKING:
    from fastio_dl.emulator.server import Emulator

OAUTH_TOKEN_TTL = 3600  # what the live API gives an OAuth access token
OAUTH_CLIENT_ID = "fastio-cli"
READ_TOKEN_TTL = 2 * 3600


class Endpoints:
    """Handlers over the emulator's state (``em``)."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator

    async def auth_check(self, request: web.Request) -> web.Response:
        denied = self.em.auth(request)
        if denied:
            return denied
        return ok(
            {"user": {"id": "1234567890123456789", "email_address": "emulator@example.invalid"}}
        )

    async def details(self, request: web.Request) -> web.Response:
        denied = self.em.auth(request)
        if denied:
            return denied
        space = self.em.space(request)
        if isinstance(space, web.Response):
            return space
        raw = request.match_info["node"]
        ids = raw.split(",")
        if len(ids) > 25:
            return error(400, 1400, "At most 25 node ids per request")
        if len(ids) == 1:
            node = self.em.node(space, ids[0])
            if node is None:
                return error(404, 1404, "Node not found")
            return ok({"format": "single", "node": node.to_json()})
        nodes, errors = [], []
        for node_id in ids:
            node = self.em.node(space, node_id)
            refused = self.em.refused_node(space, node_id)
            if refused is not None:
                errors.append({"node_id": node_id, "code": refused.code, "message": refused.text})
            elif node is None:
                errors.append({"node_id": node_id, "code": 1404, "message": "Node not found"})
            else:
                nodes.append(node.to_json())
        self.em.rng.shuffle(nodes)  # the contract says order is not preserved
        body = {"result": bool(nodes), "format": "multi", "nodes": nodes, "errors": errors}
        return web.json_response(body, status=200 if nodes else 404)

    async def list_folder(self, request: web.Request) -> web.Response:
        found = self.em.storage_node(request, "folder")
        if isinstance(found, web.Response):
            return found
        space, node = found
        try:
            page_size = int(request.query.get("page_size", "100"))
        except ValueError:
            page_size = 0
        if page_size not in (100, 250, 500):
            return error(400, 1400, "page_size must be 100, 250 or 500")
        children = sorted(
            (space.nodes[c] for c in space.children[node.id]), key=lambda n: (n.name, n.id)
        )
        cursor = request.query.get("cursor")
        start = 0
        if cursor:
            try:
                start = int(cursor, 16)
            except ValueError:
                return error(400, 1400, "bad cursor")
        size = self.em.switches.list_page_size or page_size
        page = children[start : start + size]
        more = start + size < len(children)
        next_cursor = format(start + size, "x") if more else None
        return ok(
            list_payload(
                self.em.switches.list_shape, [c.to_json() for c in page], more, size, next_cursor
            )
        )

    async def versions(self, request: web.Request) -> web.Response:
        found = self.em.storage_node(request, "file")
        if isinstance(found, web.Response):
            return found
        _, node = found
        return ok({"versions": versions_json(node)})

    async def read_note(self, request: web.Request) -> web.Response:
        found = self.em.storage_node(request)
        if isinstance(found, web.Response):
            return found
        _, node = found
        if node.type != "note":
            return error(400, 1400, f"A {node.type} is not a note")
        text = node.note_text
        version_id = request.query.get("version_id")
        if version_id:
            blob = version_blob(node, version_id)
            if isinstance(blob, web.Response):
                return blob
            assert blob is not None  # a version always has its bytes
            text = bytes(blob.read(0, blob.size)).decode()
        return ok({"content": text, "note": node.to_json()})

    async def oauth_token(self, request: web.Request) -> web.Response:
        """``POST /oauth/token/`` (form): a refresh token buys a new access token and a new
        refresh token; the old refresh token is spent (rotation, as careful servers do)."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.em.oauth_forms.append(form)
        refresh = form.get("refresh_token", "")
        if form.get("grant_type") != "refresh_token" or form.get("client_id") != OAUTH_CLIENT_ID:
            return web.json_response(
                {"error": "invalid_request", "error_description": "unsupported grant or client"},
                status=400,
            )
        if refresh not in self.em.refresh_tokens:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "refresh token unknown or spent"},
                status=400,
            )
        self.em.refresh_tokens.discard(refresh)
        access, new_refresh = self.em.issue_login()
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": OAUTH_TOKEN_TTL,
                "refresh_token": new_refresh,
            }
        )

    async def fileshare_details(self, request: web.Request) -> web.Response:
        share = self.em.fileshare(request)
        if isinstance(share, web.Response):
            return share
        return ok(
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
        share = self.em.fileshare(request)
        if isinstance(share, web.Response):
            return share
        return ok({"versions": versions_json(share.node)})

    async def request_read(self, request: web.Request) -> web.Response:
        found = self.em.storage_node(request)
        if isinstance(found, web.Response):
            return found
        space, node = found
        pinned = version_blob(node, request.query.get("version_id"))
        if isinstance(pinned, web.Response):
            return pinned
        token = "rt." + secrets.token_urlsafe(24)
        self.em.read_tokens[token] = (space.kind, space.id, node.id, time.time() + READ_TOKEN_TTL)
        self.em.counters["tokens_minted"] += 1
        return ok({"token": token})

"""Request/response mapping of the client: envelope variants, errors, wait hints, pagination."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from fastio_dl.client import FastioClient, map_http_error, wait_hint
from fastio_dl.config import Secret, Settings
from fastio_dl.errors import ApiError, AuthError, PaymentRequiredError

BASE = "set by the scripted fixture"
WS = "3867689418901071163"
A = "2" + "a" * 28
B = "2" + "b" * 28


class Script:
    """A tiny real server on 127.0.0.1 that answers each request with the next scripted reply.

    aioresponses (0.7.9) does not work with aiohttp 3.14, so mapping tests use a real loopback
    server instead; the last reply repeats.
    """

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.paths: list[str] = []
        self.base = ""

    def get(self, status: int = 200, payload: Any = None, body: str | None = None) -> None:
        self.replies.append((status, body if body is not None else json.dumps(payload)))

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        status, text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return web.Response(status=status, text=text, content_type="application/json")


@pytest.fixture
async def script(aiohttp_server: Callable[..., Awaitable[Any]]) -> Script:
    scripted = Script()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", scripted.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    scripted.base = str(server.make_url("/current"))
    return scripted


def settings(base: str, **kw: object) -> Settings:
    return Settings(
        api_base=base,
        token=Secret("secret-token-123"),
        retries=2,
        backoff_initial=0.0,
        max_retry_wait=0.01,
        **kw,
    )  # type: ignore[arg-type]


async def test_envelope_variants_and_bulk_details(script: Script) -> None:
    script.get(
        payload={
            "result": "yes",
            "response": {
                "format": "multi",
                "nodes": [{"id": A, "name": "a", "type": "file"}],
                "errors": [{"node_id": B, "code": 1404, "message": "Node not found"}],
            },
        }
    )
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        nodes, errors = await client.details("workspace", WS, [A, B])
    assert script.paths == [f"/current/workspace/{WS}/storage/{A},{B}/details/"]
    assert [n["id"] for n in nodes] == [A]
    assert errors == {B: "Node not found"}


async def test_bulk_details_404_with_body_is_not_an_exception(script: Script) -> None:
    script.get(
        status=404,
        payload={
            "result": False,
            "format": "multi",
            "nodes": [],
            "errors": [{"node_id": A, "code": 1404, "message": "gone"}],
        },
    )
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        nodes, errors = await client.details("workspace", WS, [A])
    assert nodes == [] and errors == {A: "gone"}


@pytest.mark.parametrize(
    "page",
    [
        {"result": True, "nodes": {"items": [{"id": A}], "count": 1}, "next_cursor": None},
        {"result": True, "items": [{"id": A}], "pagination": {"has_more": False}},
        {"result": True, "response": {"files": [{"id": A}]}},
        {"result": True, "nodes": [{"id": A}], "next_cursor": ""},
    ],
)
async def test_list_shapes_are_all_understood(script: Script, page: dict[str, object]) -> None:
    script.get(payload=page)
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        pages = [p async for p in client.list_folder("workspace", WS, "root")]
    assert pages == [[{"id": A}]]


async def test_list_stops_on_a_repeated_cursor(script: Script) -> None:
    script.get(payload={"result": True, "nodes": [{"id": A}], "next_cursor": "c1"})
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        pages = [p async for p in client.list_folder("workspace", WS, "root")]
    assert len(pages) == 2  # first page, then the page for c1 answers c1 again: stop


async def test_retryable_status_is_retried_then_succeeds(script: Script) -> None:
    script.get(status=503, body="<html>busy</html>")
    script.get(payload={"result": True, "token": "rt.abc"})
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        assert await client.request_read("workspace", WS, A) == "rt.abc"
        assert client.api_calls == 2


async def test_auth_errors_are_not_retried_and_hide_the_token(script: Script) -> None:
    script.get(status=401, body="")
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        with pytest.raises(AuthError) as info:
            await client.details("workspace", WS, [A])
        assert client.api_calls == 1
    assert "secret-token-123" not in str(info.value)


def test_wait_hint_order() -> None:
    now = 1_000_000.0
    body = {"result": False, "error": {"code": 145858, "params": {"retry_after_seconds": 7}}}
    headers = {"Retry-After": "3", "x-ve-limit-expires": str(int(now) + 20)}
    assert wait_hint(429, headers, body, now) == 7
    assert wait_hint(429, headers, {"error": {"params": [{"retry_after_seconds": "5"}]}}, now) == 5
    assert wait_hint(429, headers, None, now) == 3
    assert wait_hint(429, {"x-ve-limit-expires": str(int(now) + 20)}, None, now) == 20
    assert wait_hint(429, {"X-Rate-Limit-Expiry": str(int(now) + 9)}, None, now) == 9
    assert wait_hint(429, {}, None, now) == 60
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 12))
    assert wait_hint(429, {"Retry-After": http_date}, None, now) == pytest.approx(12, abs=1)


def test_status_mapping() -> None:
    assert isinstance(map_http_error(402, {}, None, "x"), PaymentRequiredError)
    assert isinstance(map_http_error(403, {}, None, "x"), AuthError)
    read_403 = map_http_error(403, {}, None, "read", on_read=True)
    assert isinstance(read_403, ApiError) and not read_403.retryable
    for status in (408, 425, 429, 500, 502, 503, 504):
        assert map_http_error(status, {}, None, "x").retryable  # type: ignore[union-attr]
    for status in (400, 404, 409, 422):
        assert not map_http_error(status, {}, None, "x").retryable  # type: ignore[union-attr]
    flat = map_http_error(
        404, {}, {"result": False, "error_message": "No such node", "error_id": 4}, "x"
    )
    assert "No such node" in str(flat)

"""Request/response mapping of the client: envelope variants, errors, wait hints, pagination."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import web

from fastio_dl.client import FastioClient
from fastio_dl.client.answers import parse_listing, parse_node, parse_version
from fastio_dl.client.retries import map_http_error
from fastio_dl.config import Secret, Settings
from fastio_dl.errors import AccessError, ApiError, AuthError, PaymentRequiredError
from fastio_dl.models import Node, Version

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
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.headers: Callable[[], dict[str, str]] = dict  # extra headers of every answer
        self.base = ""

    def get(self, status: int = 200, payload: Any = None, body: str | None = None) -> None:
        self.replies.append((status, body if body is not None else json.dumps(payload)))

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        self.arrivals.append(time.monotonic())
        status, text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return web.Response(
            status=status, text=text, content_type="application/json", headers=self.headers()
        )


@pytest.fixture
async def script(aiohttp_server: Callable[..., Awaitable[Any]]) -> Script:
    scripted = Script()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", scripted.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    scripted.base = str(server.make_url("/current"))
    return scripted


def settings(base: str, **kw: object) -> Settings:
    values: dict[str, Any] = {"retries": 2, "backoff_initial": 0.0, "max_retry_wait": 0.01, **kw}
    return Settings(api_base=base, token=Secret("secret-token-123"), **values)


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
    assert [n.id for n in nodes] == [A]
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
    assert [[node.id for node in page] for page in pages] == [[A]]


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


async def test_a_401_the_token_check_confirms_is_an_auth_error(script: Script) -> None:
    script.get(status=401, body="")
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        with pytest.raises(AuthError) as info:
            await client.details("workspace", WS, [A])
        assert client.api_calls == 2  # the call, then the token check; neither retried
    assert script.paths[1] == "/current/user/auth/check/"
    assert "secret-token-123" not in str(info.value)


async def test_a_401_with_a_good_token_fails_only_that_call(script: Script) -> None:
    script.get(status=401, payload={"result": False, "error": {"code": 10545, "text": "No"}})
    script.get(payload={"result": True, "user": {"id": "1"}})
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        with pytest.raises(AccessError) as info:
            await client.details("workspace", WS, [A])
        assert client.api_calls == 2
    assert info.value.status == 401 and "code 10545" in str(info.value)
    assert info.value.hint is not None and "not a member" in info.value.hint


def test_status_mapping() -> None:
    assert isinstance(map_http_error(402, {}, None, "x"), PaymentRequiredError)
    assert isinstance(map_http_error(403, {}, None, "x"), AccessError)
    assert isinstance(map_http_error(401, {}, None, "x"), AccessError)
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


# ----------------------------------------------------------------------------- issue 14


@pytest.mark.parametrize(
    ("payload", "sent", "items", "cursor"),
    [
        ({"nodes": {"items": [{"id": A}], "count": 1}, "next_cursor": None}, None, 1, None),
        ({"nodes": [], "pagination": {"has_more": False}}, None, 0, None),
        ({"nodes": {A: {"name": "a"}, B: {"id": B}}, "next_cursor": "c"}, None, 2, "c"),
        ({"items": [{"id": A}], "pagination": {"next_cursor": "c2"}}, "c1", 1, "c2"),
        ({"files": [{"id": A}], "next_cursor": "c1"}, "c1", 1, None),  # the cursor just sent
        ({"nodes": [{"id": A}], "pagination": {"has_more": False, "next": "x"}}, None, 1, None),
    ],
)
def test_listing_answers_understood(
    payload: dict[str, Any], sent: str | None, items: int, cursor: str | None
) -> None:
    page = parse_listing(payload, sent)
    assert len(page.items) == items and page.cursor == cursor
    assert all(item.id for item in page.items)  # an id-keyed object's keys are the ids


def test_a_node_is_parsed_once_with_the_alternatives_tolerated() -> None:
    raw = {"id": "2AAAA-BBBBB", "name": "x", "type": "FILE", "size": "12", "hash": "AB"}
    full = parse_node({**raw, "hash_algo": "SHA256", "version": 3, "modified": "2025-01-02"})
    assert full == Node(
        "2aaaabbbbb", "x", "file", 12, "ab", "sha256", "3", "2025-01-02", None, True
    )
    # Without a version key the listing did not say enough: the planner asks details.
    assert not parse_node(raw).complete and parse_node({**raw, "version": None}).complete
    bare = parse_node({"name": ""}, "2CCCC")  # an id-keyed child that names no id itself
    assert bare == Node("2cccc", None, "file", None, None, None, None, None, None, False)
    odd = parse_node({"size": "big", "hash": "h", "version": "1"})
    assert odd.size is None and odd.complete  # said, but no number: the file fails, loudly


def test_a_version_entry_takes_its_id_from_any_of_the_keys_builds_use() -> None:
    assert parse_version({"version_id": "v2", "size": 5, "hash": "AB"}) == Version(
        "v2", 5, "ab", None, None
    )
    assert parse_version({"version": "v3", "size": "x", "created": ""}).size is None
    assert parse_version({"id": "", "version": "v4"}).id == "v4"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"data": [{"id": A}], "next_cursor": None}, "unrecognised answer (keys: data, next_"),
        ({"nodes": {}}, "holds an empty object"),
        ({"nodes": {"count": 3}}, "not a list of nodes"),
        ({"nodes": [{"id": A}, "B"]}, "not a list of nodes"),
        ({"nodes": [{"id": A}], "pagination": {"has_more": True}}, "has_more"),
        ({"nodes": [{"id": A}], "continuation": "c9"}, "['continuation']"),
        ({"nodes": [{"id": A}], "pagination": {"nextPageToken": "c9"}}, "pagination.nextPage"),
        ({"nodes": [{"id": A}] * 3}, "a full page of 3"),
    ],
)
def test_listing_answers_in_doubt_are_errors(payload: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_listing(payload, None, page_size=3)


async def test_details_answer_not_understood_is_an_error(script: Script) -> None:
    script.get(payload={"result": True, "things": [{"id": A}]})
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        with pytest.raises(ApiError, match=r"unrecognised answer \(keys: result, things\)"):
            await client.details("workspace", WS, [A])


@pytest.mark.parametrize("result", [False, "no"])
async def test_a_refusal_under_200_is_never_retried(script: Script, result: object) -> None:
    script.get(payload={"result": result, "error": {"code": 1, "text": "Not allowed"}})
    async with FastioClient.open(settings(script.base), max_connections=4) as client:
        with pytest.raises(ApiError, match="Not allowed") as info:
            await client.request_read("workspace", WS, A)
        assert client.api_calls == 1
    assert not info.value.retryable


def limited_then_a_token(script: Script) -> AbstractAsyncContextManager[FastioClient]:
    """A 429 that asks for 0.4 s, then read tokens; a client that honours waits up to 5 s."""
    limited = {"result": False, "error": {"code": 145858, "params": {"retry_after_seconds": 0.4}}}
    script.get(status=429, payload=limited)
    script.get(payload={"result": True, "token": "rt.1"})
    return FastioClient.open(settings(script.base, max_retry_wait=5.0), max_connections=4)


async def test_a_429_holds_every_api_caller(script: Script) -> None:
    async with limited_then_a_token(script) as client:
        held = asyncio.Event()
        hold = client.gate.hold

        def hold_and_tell(seconds: float) -> None:
            hold(seconds)
            held.set()

        client.gate.hold = hold_and_tell  # type: ignore[method-assign]
        first = asyncio.ensure_future(client.request_read("workspace", WS, A))
        await held.wait()
        # A caller that comes after the 429 waits for the same gate: it never meets the limit.
        second = await client.request_read("workspace", WS, B)
        assert await first == "rt.1" and second == "rt.1"
    arrivals = script.arrivals
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.35 and arrivals[2] - arrivals[0] >= 0.35


async def test_a_429_on_a_read_holds_api_callers_too(script: Script) -> None:
    """Reads may count against the API's window: a read's 429 is waited out by API calls too,
    and the read's own retry gets the same wait."""
    async with limited_then_a_token(script) as client:
        with pytest.raises(ApiError) as info:
            async with client.open_read("workspace", WS, A, token=None, start=10, end=20):
                pass
        assert info.value.status == 429 and info.value.wait_hint == pytest.approx(0.4)
        assert await client.request_read("workspace", WS, B) == "rt.1"
    assert "/read/" in script.paths[0]
    assert script.arrivals[1] - script.arrivals[0] >= 0.35


async def test_no_requests_left_in_the_window_holds_new_calls(script: Script) -> None:
    script.get(payload={"result": True, "token": "rt.1"})
    script.headers = lambda: {
        "x-ve-limit-avail": "0",
        "x-ve-limit-expires": f"{time.time() + 0.4:.3f}",
    }
    async with FastioClient.open(
        settings(script.base, max_retry_wait=5.0), max_connections=4
    ) as client:
        await client.request_read("workspace", WS, A)
        await client.request_read("workspace", WS, B)
    assert script.arrivals[1] - script.arrivals[0] >= 0.35


@pytest.mark.parametrize("asked", ["a 429", "the window"])
async def test_max_retry_wait_caps_how_long_the_gate_holds(script: Script, asked: str) -> None:
    if asked == "a 429":
        limited = {"result": False, "error": {"params": {"retry_after_seconds": 30}}}
        script.get(status=429, payload=limited)
    else:
        script.headers = lambda: {
            "x-ve-limit-avail": "0",
            "x-ve-limit-expires": f"{time.time() + 30:.3f}",
        }
    script.get(payload={"result": True, "token": "rt.1"})
    async with FastioClient.open(
        settings(script.base, max_retry_wait=0.3), max_connections=4
    ) as client:
        held: list[float] = []
        hold = client.gate.hold

        def hold_and_note(seconds: float) -> None:
            held.append(seconds)
            hold(seconds)

        client.gate.hold = hold_and_note  # type: ignore[method-assign]
        for node in (A, B):  # 30 s each if the cap were not applied
            await asyncio.wait_for(client.request_read("workspace", WS, node), 10)
    assert held and held[0] == 0.3 and all(seconds <= 0.3 for seconds in held)
    assert script.arrivals[-1] - script.arrivals[0] >= 0.3

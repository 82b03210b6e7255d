"""The emulator itself: the contract's shapes, Range, pagination, auth, counters."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from fastio_dl.emulator import DEFAULT_TOKEN, DatasetSpec, EmulatorThread, build


def call(
    base: str, path: str, token: str | None = DEFAULT_TOKEN, headers: dict[str, str] | None = None
):
    request = urllib.request.Request(base + path, headers={**(headers or {})})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def body(raw: bytes) -> Any:
    return json.loads(raw)


def test_fixture_serves_a_workspace(fastio_emulator: EmulatorThread) -> None:
    status, _, raw = call(fastio_emulator.api_base, "/user/auth/check/")
    assert status == 200 and body(raw)["result"] is True
    assert call(fastio_emulator.api_base, "/user/auth/check/", token=None)[0] == 401
    assert call(fastio_emulator.api_base, "/user/auth/check/", token="wrong")[0] == 401


@pytest.fixture
def emu():
    emulator, space = build(DatasetSpec(files=600, depth=0, max_size=2000, notes=0, links=0))
    with EmulatorThread(emulator) as server:
        yield server, space


def test_pagination_and_page_sizes(emu) -> None:
    server, space = emu
    base = f"/workspace/{space.id}/storage/root/list/"
    assert call(server.api_base, base + "?page_size=42")[0] == 400
    seen, cursor, pages = [], None, 0
    while True:
        status, _, raw = call(
            server.api_base, base + "?page_size=250" + (f"&cursor={cursor}" if cursor else "")
        )
        assert status == 200
        page = body(raw)
        seen += [n["id"] for n in page["nodes"]["items"]]
        pages += 1
        assert page["next_cursor"] == page["pagination"]["next_cursor"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 600


def test_bulk_details_shapes(emu) -> None:
    server, space = emu
    ids = [n.id for n in list(space.files())[:26]]
    status, _, raw = call(
        server.api_base, f"/workspace/{space.id}/storage/{','.join(ids[:3])}/details/"
    )
    assert status == 200 and body(raw)["format"] == "multi" and len(body(raw)["nodes"]) == 3
    assert all({"hash", "hash_algo", "version", "size"} <= set(n) for n in body(raw)["nodes"])
    assert (
        call(server.api_base, f"/workspace/{space.id}/storage/{','.join(ids)}/details/")[0] == 400
    )
    missing = "2" + "k" * 28
    status, _, raw = call(
        server.api_base, f"/workspace/{space.id}/storage/{missing},{missing}/details/"
    )
    assert status == 404 and body(raw)["errors"][0]["node_id"] == missing
    status, _, raw = call(server.api_base, f"/workspace/{space.id}/storage/{ids[0]}/details/")
    assert body(raw)["format"] == "single" and body(raw)["node"]["id"] == ids[0]


def test_read_with_range_and_tokens(emu) -> None:
    server, space = emu
    node = max(space.files(), key=lambda n: n.blob.size)
    path = f"/workspace/{space.id}/storage/{node.id}"
    data = node.blob.read(0, node.blob.size)
    token = body(call(server.api_base, path + "/requestread/")[2])["token"]
    status, headers, raw = call(server.api_base, f"{path}/read/?token={token}", token=None)
    assert status == 200 and raw == data and headers["ETag"] == f'"{node.blob.digest("sha256")}"'
    status, headers, raw = call(
        server.api_base, f"{path}/read/?token={token}", token=None, headers={"Range": "bytes=10-"}
    )
    assert status == 206 and raw == data[10:]
    assert headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    status, _, _ = call(
        server.api_base,
        f"{path}/read/?token={token}",
        token=None,
        headers={"Range": f"bytes={len(data)}-"},
    )
    assert status == 416
    assert call(server.api_base, f"{path}/read/?token=forged", token=None)[0] == 401
    assert call(server.api_base, f"{path}/read/")[0] == 200  # the API token works too
    assert server.emulator.counters["tokens_minted"] == 1


def test_the_first_read_is_timed_until_a_reset(emu) -> None:
    server, space = emu
    node = next(iter(space.files()))
    path = f"/workspace/{space.id}/storage/{node.id}"
    call(server.api_base, "/user/auth/check/")
    assert server.emulator.stats()["first_read_at"] is None  # API calls are not reads
    before = time.monotonic()
    assert call(server.api_base, path + "/read/")[0] == 200
    first = server.emulator.stats()["first_read_at"]
    assert first is not None and before <= first <= time.monotonic()
    call(server.api_base, path + "/read/")
    assert server.emulator.stats()["first_read_at"] == first  # the first one, not the last
    server.emulator.reset_counters()
    assert server.emulator.stats()["first_read_at"] is None


def test_a_capped_read_never_runs_ahead_of_its_cap() -> None:
    """The per-connection cap holds from a request's first byte: no chunk leaves early (a
    free first chunk would let a client that spreads requests over new connections beat the
    cap that a client reusing one connection sees)."""
    emulator, space = build(
        DatasetSpec(files=1, depth=0, min_size=400_000, max_size=400_000, notes=0, links=0)
    )
    (node,) = space.files()
    rate = 2_000_000  # bytes per second: chunks of 100,000 bytes, 50 ms apart
    emulator.switches.bandwidth = rate
    with EmulatorThread(emulator) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(2):  # twice on one connection: the second request is paced on its own
            began = time.monotonic()
            connection.request(
                "GET",
                f"/current/workspace/{space.id}/storage/{node.id}/read/",
                headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
            )
            response = connection.getresponse()
            assert response.status == 200
            got = 0
            while chunk := response.read1(65536):
                got += len(chunk)
                allowed = rate * (time.monotonic() - began) + 4096
                assert got <= allowed, f"{got} bytes after {time.monotonic() - began:.3f} s"
            assert got == 400_000
            assert time.monotonic() - began >= 400_000 / rate * 0.95
            response.close()
        connection.close()


def test_rate_window_counts_down_then_refuses_until_it_resets() -> None:
    emulator, _ = build(DatasetSpec(files=3, depth=0))
    emulator.switches.rate_window = 3
    emulator.switches.rate_window_seconds = 30
    with EmulatorThread(emulator) as server:
        answers = [call(server.api_base, "/user/auth/check/") for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert [h["x-ve-limit-avail"] for _, h, _ in answers] == ["2", "1", "0", "0"]
    expires = {float(h["x-ve-limit-expires"]) for _, h, _ in answers}
    assert len(expires) == 1 and expires.pop() > time.time() + 20
    assert body(answers[3][2])["error"]["params"]["retry_after_seconds"] > 20


def test_yes_no_envelopes_and_refusals_by_space_and_node() -> None:
    from fastio_dl.emulator import Refusal

    emulator, space = build(DatasetSpec(files=3, depth=0, notes=0, links=0))
    a, b = list(space.files())[:2]
    emulator.switches.yes_no = True
    emulator.switches.refusals = [Refusal(403, 10560, "Restricted", node=a.id)]
    with EmulatorThread(emulator) as server:
        base = f"/workspace/{space.id}/storage"
        status, _, raw = call(server.api_base, f"{base}/{a.id}/details/")
        assert status == 403 and body(raw)["result"] == "no"
        assert body(raw)["error"]["code"] == 10560
        status, _, raw = call(server.api_base, f"{base}/{a.id},{b.id}/details/")
        assert status == 200 and body(raw)["result"] == "yes"
        assert [n["id"] for n in body(raw)["nodes"]] == [b.id]
        assert body(raw)["errors"][0]["code"] == 10560
        emulator.switches.refusals = [Refusal(401, 10545, "Not a member", space=space.id)]
        assert call(server.api_base, f"{base}/root/list/?page_size=100")[0] == 401
        assert call(server.api_base, "/user/auth/check/")[0] == 200  # the token is fine


def test_reads_are_recorded_with_version_and_encoding() -> None:
    emulator, space = build(DatasetSpec(files=1, depth=0, notes=0, links=0, min_size=10))
    (node,) = space.files()
    with EmulatorThread(emulator) as server:
        path = f"/workspace/{space.id}/storage/{node.id}/read/?version_id={node.version}"
        status, _, _ = call(server.api_base, path, headers={"Accept-Encoding": "identity"})
        assert status == 200
        bad = f"/workspace/{space.id}/storage/{node.id}/requestread/?version_id=vnope"
        assert call(server.api_base, bad)[0] == 404
    assert emulator.reads[0] == {
        "endpoint": "read",
        "node": node.id,
        "version_id": node.version,
        "accept_encoding": "identity",
        "token": False,
        "range": None,
    }

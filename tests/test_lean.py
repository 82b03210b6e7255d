"""Small files' lean HTTP client against a scripted server on 127.0.0.1: what the emulator
cannot be made to do on purpose (close a kept-alive connection between requests, answer in
chunks, with no length, with garbage), and the redirect and timeout rules it shares with
aiohttp. The whole runs through it are in the rest of the suite (every file up to 1 MiB)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fastio_dl.client.lean import LeanAnswer, LeanReads
from fastio_dl.emulator import DatasetSpec, Fault, SeededBlob
from fastio_dl.errors import TransferError
from tests.conftest import Served

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[bool]]


class Scripted:
    """A server whose n-th request (over all connections) gets ``script[n]``; an answer
    returns whether the connection stays open. It keeps the requests' heads."""

    def __init__(self, script: list[Answer]) -> None:
        self.script = script
        self.heads: list[str] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head.decode())
                answer = self.script[len(self.heads) - 1]
                if not await answer(reader, writer, head.decode()):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


def reply(
    body: bytes = b"", status: str = "200 OK", headers: str = "", *, close: bool = False
) -> Answer:
    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _h: str) -> bool:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body
        )
        await writer.drain()
        return not close

    return answer


def raw(data: bytes, *, then_wait: float = 0.0, keep: bool = False) -> Answer:
    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _h: str) -> bool:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(then_wait)
        return keep

    return answer


def lean(stall: float = 5.0) -> LeanReads:
    return LeanReads(
        ssl.create_default_context(),
        user_agent="fastio-dl/test",
        connect_timeout=5.0,
        stall_timeout=stall,
        keep=4,
    )


async def fetch(reads: LeanReads, url: str, limit: int = 1 << 20, **headers: str) -> LeanAnswer:
    return await reads.get(url, headers, limit, same_origin_only=False)


def body(answer: LeanAnswer) -> bytes:
    return b"".join(answer.chunks)


def test_requests_share_a_kept_alive_connection() -> None:
    async def main() -> None:
        async with Scripted([reply(b"one"), reply(b"two")]) as server:
            reads = lean()
            first = await fetch(reads, server.base + "/a?x=1")
            second = await fetch(reads, server.base + "/b")
            reads.close()
        assert (body(first), body(second)) == (b"one", b"two")
        assert server.connections == 1
        assert server.heads[0].startswith("GET /a?x=1 HTTP/1.1\r\n")
        assert "User-Agent: fastio-dl/test" in server.heads[0]

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced_quietly() -> None:
    """The server ends a kept-alive connection without saying so (no ``Connection: close``):
    seen while it idles, or only when the next request finds it closing (nothing answered),
    the request goes out again on a new connection, without an error."""

    async def main() -> None:
        script = [reply(b"one", close=True), reply(b"two"), raw(b""), reply(b"three")]
        async with Scripted(script) as server:
            reads = lean()
            await fetch(reads, server.base + "/a")
            await asyncio.sleep(0.05)  # the close arrives while the connection idles
            second = await fetch(reads, server.base + "/b")
            third = await fetch(reads, server.base + "/c")  # closed as it is asked
            reads.close()
        assert (body(second), body(third)) == (b"two", b"three")
        assert server.connections == 3
        assert [h.split(" ")[1] for h in server.heads] == ["/a", "/b", "/c", "/c"]

    asyncio.run(main())


def test_a_chunked_body_and_a_body_that_ends_with_its_connection() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfghij"

    async def main() -> None:
        async with Scripted([raw(chunked, keep=True), raw(until_close)]) as server:
            reads = lean()
            first = await fetch(reads, server.base + "/a")
            second = await fetch(reads, server.base + "/b")
            reads.close()
        assert (body(first), first.broken) == (b"abcde", None)
        assert (body(second), second.broken) == (b"fghij", None)
        assert server.connections == 1  # the chunked answer left it open

    asyncio.run(main())


def test_a_body_longer_than_asked_is_cut_there_and_its_connection_dropped() -> None:
    async def main() -> None:
        async with Scripted([reply(b"x" * 5000), reply(b"next")]) as server:
            reads = lean()
            long = await fetch(reads, server.base + "/a", limit=100)
            after = await fetch(reads, server.base + "/b")
            reads.close()
        assert 100 < sum(map(len, long.chunks)) <= 5000  # the caller sees that it is too long
        assert body(after) == b"next" and server.connections == 2

    asyncio.run(main())


def test_a_broken_body_says_how_far_it_got() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 300

    async def main() -> None:
        async with Scripted([raw(cut)]) as server:
            reads = lean()
            answer = await fetch(reads, server.base + "/a")
            reads.close()
        assert body(answer) == b"y" * 300
        assert answer.broken == "connection broke after 300 bytes"
        assert answer.hint is None

    asyncio.run(main())


@pytest.mark.parametrize(
    ("script", "said", "retryable"),
    [
        ([raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", then_wait=1.0)], "not valid HTTP", True),
        ([raw(b"", then_wait=3.0)], "timed out", True),
        ([raw(b"")], "closed", True),
        (
            [raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", then_wait=1.0)],
            "headers are over 64 KiB",
            True,
        ),
    ],
    ids=["not http", "silence", "closed at once", "endless headers"],
)
def test_an_answer_that_never_comes_is_a_clear_error(
    script: list[Answer], said: str, retryable: bool
) -> None:
    async def main() -> None:
        async with Scripted(script) as server:
            reads = lean(stall=0.3)
            with pytest.raises(TransferError) as caught:
                await fetch(reads, server.base + "/a")
            reads.close()
        assert said in str(caught.value) and caught.value.retryable is retryable

    asyncio.run(main())


def test_a_body_that_stalls_is_broken_off_after_the_stall_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 10

    async def main() -> None:
        async with Scripted([raw(head, then_wait=3.0)]) as server:
            reads = lean(stall=0.3)
            started = asyncio.get_running_loop().time()
            answer = await fetch(reads, server.base + "/a")
            waited = asyncio.get_running_loop().time() - started
            reads.close()
        assert answer.broken == "read stalled: no data for 0.3 s after 10 bytes"
        assert answer.hint is not None and "--stall-timeout" in answer.hint
        assert 0.25 < waited < 2.0

    asyncio.run(main())


def test_redirects_keep_authorization_only_within_their_origin() -> None:
    async def main() -> None:
        async with Scripted([reply(b"bytes")]) as other:
            hop = f"Location: {other.base}/blob?sig=1\r\n"
            async with Scripted(
                [
                    reply(status="302 Found", headers="Location: /moved\r\n"),
                    reply(status="302 Found", headers=hop),
                    reply(status="307 Temporary Redirect", headers=hop),
                ]
            ) as origin:
                reads = lean()
                answer = await fetch(reads, origin.base + "/read", Authorization="Bearer s3cret")
                kept = await reads.get(
                    origin.base + "/read",
                    {"Authorization": "Bearer s3cret"},
                    100,
                    same_origin_only=True,
                )
                reads.close()
        assert body(answer) == b"bytes"
        assert [h.split(" ")[1] for h in origin.heads] == ["/read", "/moved", "/read"]
        assert all("Authorization: Bearer s3cret" in h for h in origin.heads)
        assert other.heads[0].startswith("GET /blob?sig=1 ")
        assert "Authorization" not in other.heads[0]
        # A File Share's read (same_origin_only) hands the foreign redirect back unfollowed.
        assert kept.status == 307 and len(other.heads) == 1

    asyncio.run(main())


def test_endless_or_malformed_redirects_and_a_header_with_a_line_break_are_refused() -> None:
    loop_back = reply(status="302 Found", headers="Location: /again\r\n")
    malformed = reply(status="302 Found", headers="Location: http://127.0.0.1:port/x\r\n")

    async def main() -> None:
        async with Scripted([loop_back] * 6 + [malformed]) as server:
            reads = lean()
            with pytest.raises(TransferError, match="more than 5 redirects"):
                await fetch(reads, server.base + "/a")
            with pytest.raises(TransferError, match="line break"):
                await fetch(reads, server.base + "/a", Range="bytes=0-\r\nX-Evil: 1")
            with pytest.raises(TransferError, match="redirected to a malformed address"):
                await fetch(reads, server.base + "/a")
            reads.close()
        assert len(server.heads) == 7  # six for the loop, none for the line break, one more

    asyncio.run(main())


def test_a_refused_connection_is_a_retryable_error_naming_the_address() -> None:
    async def main() -> None:
        async with Scripted([]) as server:
            base = server.base
        await asyncio.sleep(0.05)
        reads = lean()
        with pytest.raises(TransferError) as caught:
            await fetch(reads, base + "/a")
        assert f"cannot connect to {base[7:]}" in str(caught.value)
        assert caught.value.retryable

    asyncio.run(main())


def test_small_files_read_through_it_unless_the_rate_is_paced(
    make_served: Callable[..., Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file up to 1 MiB is read whole through the lean client; larger ones stream
    through aiohttp, and so does every file under --limit-rate (its pace must hold on the
    wire)."""
    asked: list[int] = []
    real = LeanReads.get

    async def counted(self: LeanReads, url: str, *args: Any, **kwargs: Any) -> LeanAnswer:
        asked.append(args[1])  # the body limit: the file's size
        return await real(self, url, *args, **kwargs)

    monkeypatch.setattr(LeanReads, "get", counted)
    served = make_served(DatasetSpec(files=12, depth=0, max_size=3 * 1024 * 1024, seed=7))
    files = [n for n in served.space.files() if n.blob.size]
    small = sorted(n.blob.size for n in files if n.blob.size <= 1024 * 1024)
    assert small and len(small) < len(files)  # the data set has both kinds
    done = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "a"))
    assert done.exit_code == 0, done.stderr
    assert sorted(asked) == small
    asked.clear()
    paced = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "b"), "--limit-rate", "1G"
    )
    assert paced.exit_code == 0, paced.stderr
    assert asked == []


def test_a_resumed_small_file_takes_the_whole_body_when_range_is_ignored(
    served: Served, tmp_path: Path
) -> None:
    """After a drop at 20,000 bytes the retry asks for the rest; a server that ignores Range
    sends the whole file again, in pieces (a bandwidth cap): all of it is read and the file
    starts over from byte zero, where reading only what was left would cut it short on
    every retry."""
    node = served.server.call(
        lambda: served.space.add_file("root", "small.bin", SeededBlob(5, 50_000))
    )
    faults = [Fault("drop", after_bytes=20_000, times=1), Fault("ignore_range")]
    served.server.call(lambda: served.emulator.set_faults(faults))
    served.emulator.switches.bandwidth = 400_000  # 20,000-byte pieces, paced
    done = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--retries", "2")
    served.emulator.switches.bandwidth = 0
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "small.bin").read_bytes() == node.blob.read(0, 50_000)
    counters = served.emulator.counters
    assert counters["fault:drop"] == 1 and counters["fault:ignore_range"] >= 1


def test_interim_answers_are_skipped_and_a_protocol_switch_is_refused() -> None:
    early = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfile1"
    )
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )

    async def main() -> None:
        async with Scripted([raw(early, keep=True), reply(b"file2"), raw(switch)]) as server:
            reads = lean()
            first = await fetch(reads, server.base + "/a")
            second = await fetch(reads, server.base + "/b")
            with pytest.raises(TransferError, match="switched protocols") as caught:
                await fetch(reads, server.base + "/c")
            reads.close()
        assert (first.status, body(first), "Link" in first.headers) == (200, b"file1", False)
        assert body(second) == b"file2"  # its own body, on the same connection
        assert server.connections == 1 and not caught.value.retryable

    asyncio.run(main())


def test_a_redirect_to_a_malformed_host_name_is_a_clear_error() -> None:
    bad = reply(
        status="302 Found", headers="Location: http://\u00f1..com/x\r\n".encode().decode("latin-1")
    )

    async def main() -> None:
        async with Scripted([bad]) as server:
            reads = lean()
            with pytest.raises(TransferError, match="malformed host name"):
                await fetch(reads, server.base + "/a")
            reads.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        # plain absolute URLs: cut without urlsplit
        (
            "http://127.0.0.1:8080/a/b?x=1&y=%2F#frag",
            None,
            (
                "http",
                "127.0.0.1",
                8080,
                "127.0.0.1:8080",
                ("http", "127.0.0.1", 8080),
                "/a/b?x=1&y=%2F",
            ),
        ),
        (
            "HTTPS://Files.Example.COM",
            None,
            (
                "https",
                "files.example.com",
                443,
                "Files.Example.COM",
                ("https", "files.example.com", None),
                "/",
            ),
        ),
        (
            "http://user:pw@[::1]:81/x?",
            None,
            ("http", "::1", 81, "[::1]:81", ("http", "::1", 81), "/x"),
        ),
        # anything else: resolved and encoded the long way
        (
            "/moved?to=a b",
            "http://h:9/read/?token=t",
            ("http", "h", 9, "h:9", ("http", "h", 9), "/moved?to=a%20b"),
        ),
        (
            " http://h/a b/\u00e9 ",
            "http://other/",
            ("http", "h", 80, "h", ("http", "h", None), "/a%20b/%C3%A9"),
        ),
        (
            "http://b\u00fccher.example/x",
            None,
            (
                "http",
                "xn--bcher-kva.example",
                80,
                "xn--bcher-kva.example",
                ("http", "b\u00fccher.example", None),
                "/x",
            ),
        ),
    ],
)
def test_addresses_split_the_same_whichever_way_they_are_cut(
    url: str, base: str | None, expected: tuple[Any, ...]
) -> None:
    reads = lean()
    origin, target = reads._split(url, base=base)
    got = (origin.scheme, origin.host, origin.port, origin.authority, origin.who, target)
    assert got == expected
    # The origin is remembered, and the same URL cut again gives the same answer.
    assert reads._split(url, base=base) == (origin, target)


def test_remembered_origins_are_bounded() -> None:
    from fastio_dl.client.lean import ORIGINS_KEPT

    reads = lean()
    for n in range(ORIGINS_KEPT * 2 + 1):
        reads._split(f"http://host-{n}.example/file")
    assert 0 < len(reads._origins) <= ORIGINS_KEPT


def test_a_scheme_that_is_not_http_is_refused_however_the_address_is_cut() -> None:
    reads = lean()
    for url in ("ftp://h/x", "file:///etc/passwd", "http:///no-host"):
        with pytest.raises(TransferError, match="cannot follow a redirect"):
            reads._split(url)


def test_an_answers_headers_are_found_whatever_their_case() -> None:
    from fastio_dl.client.lean import _Headers

    headers = _Headers([(b"Content-Length", b"5"), (b"location", b"/x\xe9"), (b"X-A", b"1")])
    assert headers["content-length"] == "5"
    assert headers.get("Location") == "/x\u00e9"  # latin-1, as aiohttp decodes them
    assert headers.get("Content-Range") is None and "x-a" in headers
    assert list(headers) == ["Content-Length", "location", "X-A"] and len(headers) == 3
    with pytest.raises(KeyError):
        headers["Retry-After"]

"""Small files' reads over a lean HTTP/1.1 client.

A small file (up to 1 MiB) costs two requests, its ``/read/`` and the redirect to where the
bytes are, and little else; aiohttp's request machinery was more than half of the event
loop's time there (tests.benchmarks B7, 5,000 files of 64 KiB). This client does only what
such a read needs: kept-alive connections per origin, one GET at a time on each, the answer
parsed by httptools (the parser uvicorn uses) and kept whole in memory, redirects followed.
Large files, and every run through a proxy, read through aiohttp.

What it keeps of aiohttp's behaviour, and tests hold it to:

- TLS with the run's own verifying context (certificate and host name checked);
- a redirect that leaves the origin drops the ``Authorization`` header; with
  ``same_origin_only`` (a File Share, whose password header goes along) it is not followed;
- a kept-alive connection the server closed meanwhile is tried again once, on a new one;
- ``--connect-timeout`` bounds a connection, ``--stall-timeout`` a silence;
- an answer that is not HTTP, a broken body, a body longer than asked for: each is an error
  of its own (the caller's short read or integrity error), never a quiet short file.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator, Mapping
from typing import NamedTuple
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httptools

from fastio_dl.client.reads import STALL_HINT, origin_of_parts
from fastio_dl.errors import TransferError

REDIRECTS = frozenset({301, 302, 303, 307, 308})
ERROR_BODY_MAX = 64 * 1024  # of an answer that is not the bytes asked for
HEADERS_MAX = 64 * 1024  # an answer's header lines together
SWITCHED = "read: the server switched protocols (HTTP 101) on a plain GET"
MAX_REDIRECTS = 5
# Characters a request target may carry as they are; anything else is percent-encoded.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:%-._~"
_PLAIN = re.compile(r"[A-Za-z0-9/?#\[\]@!$&'()*+,;=:%._~-]*")
# An absolute http(s) URL of plain characters only (what the API and storage servers send):
# split here without urlsplit, its origin looked up in a cache. Anything else takes the long way.
_PLAIN_URL = re.compile(
    r"((?i:https?)://[A-Za-z0-9\[\]@!$&'()*+,;=:%._~-]+)"
    r"(/[A-Za-z0-9/\[\]@!$&'()*+,;=:%._~-]*)?"
    r"(?:\?([A-Za-z0-9/?\[\]@!$&'()*+,;=:%._~-]*))?"
    r"(?:#.*)?"
)
ORIGINS_KEPT = 256  # origins whose split is remembered (a CDN may name a host per file)


class _Origin(NamedTuple):
    """Where a request goes: what the connection needs, and who it is for a redirect."""

    text: str  # scheme://authority, as the URL spelt it
    scheme: str  # lower case: http or https
    host: str  # as connected to (an international name encoded)
    port: int
    authority: str  # the Host header's value
    who: tuple[str, str, int | None]  # origin_of_parts(): compared across a redirect


class _Headers(Mapping[str, str]):
    """An answer's headers as the parser gave them, looked up without case (decoded only when
    asked for: an answer has a handful, and a read asks for two or three)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __getitem__(self, name: str) -> str:
        wanted = name.lower().encode("latin-1")
        for key, value in self._raw:
            if key.lower() == wanted:
                return value.decode("latin-1")
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key.decode("latin-1") for key, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class LeanAnswer:
    """A whole answer: status, headers, and the body's chunks, or those that came before the
    link broke (``broken`` says how, ``hint`` what to do about it)."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        chunks: list[bytes],
        broken: str | None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.broken = broken
        self.hint = hint

    @property
    def content_length(self) -> int | None:
        try:
            return int(self.headers["Content-Length"])
        except (KeyError, ValueError):
            return None

    async def read(self) -> bytes:
        return b"".join(self.chunks)

    def release(self) -> None:
        """Nothing to give back: the connection went back to its pool already."""


class _Stale(Exception):
    """The connection ended before a byte of the answer came (a kept-alive one the server
    closed meanwhile): the request may be sent again on a new connection."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time, its answer read whole.

    An answer is taken once: complete, cut off (too long), broken or failed. Whatever the
    parser reports after that (bytes of another answer in the same read) only marks the
    connection unusable; interim answers (1xx) are skipped, as HTTP/1.1 says."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stall: float) -> None:
        self._loop = loop
        self._stall = stall
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._limit = 0
        self._asked = 0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self.chunks: list[bytes] = []
        self.received = 0
        self.started = False  # a byte of this answer came
        self.headed = False  # its (final) status line and headers came
        self._interim = False  # the headers are a 1xx answer's, to be skipped
        self._taken = False  # the answer is settled: nothing the parser says changes it
        self.broken: str | None = None
        self.hint: str | None = None  # what to do about a break

    # -- the request
    async def exchange(self, head: bytes, limit: int) -> None:
        """Send ``head``; wait for the whole answer (its body up to ``limit`` bytes and one
        more: a longer body ends the read there, for the caller to refuse)."""
        assert self.transport is not None
        self._reset()
        self._asked = self._limit = limit
        self.reusable = False
        self._waiter = self._loop.create_future()
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._stall, self._check_stall)
        try:
            self.transport.write(head)
            await self._waiter
        finally:
            self._timer.cancel()
            self._waiter = None

    def _settle(self, error: BaseException | None = None) -> None:
        self._taken = True
        if self._waiter is not None and not self._waiter.done():
            if error is None:
                self._waiter.set_result(None)
            else:
                self._waiter.set_exception(error)

    def _drop(self) -> None:
        """This connection carries no other request."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _end(self, why: str, hint: str | None = None) -> None:
        """The answer cannot go on: a body broken off, or an error before one started."""
        self._drop()
        if self._taken:
            return
        if self.headed:
            self.broken, self.hint = why, hint
            self._settle()
        elif not self.started:
            self._settle(_Stale(why))
        else:
            self._settle(TransferError(f"read: {why}", retryable=True))

    def _check_stall(self) -> None:
        silent = self._loop.time() - self._last
        if silent < self._stall:
            self._timer = self._loop.call_later(self._stall - silent, self._check_stall)
        elif self.headed:
            self._end(
                f"read stalled: no data for {self._stall:g} s after {self.received} bytes",
                STALL_HINT,
            )
        else:
            self.started = True  # not stale: the server took the request and said nothing
            self._end("timed out")

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._taken:
            # Bytes nobody asked for: this connection cannot be trusted with another request.
            self._drop()
            return
        self._last = self._loop.time()
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._drop()
            self._settle(TransferError(SWITCHED))
        except httptools.HttpParserError as exc:
            self._end(f"the answer is not valid HTTP ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        if self._waiter is None or self._taken:
            return
        if self.headed and exc is None and self._until_close():
            self._settle()  # a body without a length ends with its connection
            return
        why = "connection closed" if exc is None else f"connection broke ({type(exc).__name__})"
        if self.headed:
            why = f"connection broke after {self.received} bytes"
        self._end(why)

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._taken:
            return self._drop()
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADERS_MAX:
            return self._end(f"the answer's headers are over {HEADERS_MAX // 1024} KiB")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._taken:
            return self._drop()
        self.status = self._parser.get_status_code()
        if self.status == 101:
            self._drop()
            return self._settle(TransferError(SWITCHED))
        if 100 <= self.status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer is still to come
            return
        self.headed = True
        self._limit = self._asked if self.status in (200, 206) else ERROR_BODY_MAX

    def on_body(self, body: bytes) -> None:
        if self._taken:
            return self._drop()
        self.chunks.append(body)
        self.received += len(body)
        if self.received > self._limit:
            # More than asked for: what came is handed over (the caller refuses a file body
            # that is too long), and the rest is not read.
            self._drop()
            self._settle()

    def on_message_complete(self) -> None:
        if self._taken:
            return self._drop()
        if self._interim:
            self.headers, self._header_bytes, self._interim = [], 0, False
            return
        self.reusable = self._parser.should_keep_alive()
        self._settle()


class LeanReads:
    """The run's small reads: connections kept per origin, redirects followed."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        user_agent: str,
        connect_timeout: float,
        stall_timeout: float,
        keep: int,
    ) -> None:
        self._context = context
        self._user_agent = user_agent
        self._connect_timeout = connect_timeout
        self._stall = stall_timeout
        self._keep = keep  # idle connections kept per origin
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}  # by scheme://authority as URLs spell it

    async def get(
        self,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        *,
        same_origin_only: bool,
    ) -> LeanAnswer:
        """GET ``url``, following redirects; a 3xx to another origin comes back as it is
        when ``same_origin_only``."""
        sent = dict(headers)
        origin, target = self._split(url)
        for _ in range(MAX_REDIRECTS + 1):
            answer = await self._exchange(origin, target, sent, limit)
            location = answer.headers.get("Location")
            if answer.status not in REDIRECTS or not location:
                return answer
            try:
                moved, target = self._split(location, base=origin.text + target)
            except ValueError:  # a port that is no number, a broken IPv6 literal
                raise TransferError("read: redirected to a malformed address") from None
            if moved.who != origin.who:
                if same_origin_only:
                    return answer
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            origin = moved
        raise TransferError(f"read: more than {MAX_REDIRECTS} redirects")

    def _split(self, url: str, *, base: str | None = None) -> tuple[_Origin, str]:
        """``url`` (resolved against ``base``) as its origin and its request target. A plain
        absolute URL is cut here, its origin remembered; anything else is resolved, its path
        and query percent-encoded where they must be."""
        plain = _PLAIN_URL.fullmatch(url)
        if plain is None:
            if base is not None:
                url = _absolute(base, url)
            parts = urlsplit(url)
            origin_text = f"{parts.scheme}://{parts.netloc}"
            path, query = _quoted(parts.path), _quoted(parts.query)
        else:
            origin_text, path, query = plain.group(1, 2, 3)
        origin = self._origins.get(origin_text)
        if origin is None:
            origin = _origin(origin_text)
            if len(self._origins) >= ORIGINS_KEPT:
                self._origins.clear()
            self._origins[origin_text] = origin
        target = path or "/"
        return origin, target + "?" + query if query else target

    async def _exchange(
        self, origin: _Origin, target: str, headers: Mapping[str, str], limit: int
    ) -> LeanAnswer:
        head = _request_head(origin.authority, target, self._user_agent, headers)
        key = (origin.scheme, origin.host, origin.port)
        idle = self._idle.setdefault(key, [])
        while True:
            connection = idle.pop() if idle else None
            kept = connection.transport if connection is not None else None
            reused = kept is not None and not kept.is_closing()
            if not reused:
                connection = await self._connect(origin.scheme, origin.host, origin.port)
            assert connection is not None
            try:
                await connection.exchange(head, limit)
            except _Stale as exc:
                if reused:
                    continue  # closed by the server while it idled: once more, on a new one
                raise TransferError(f"read: {exc} before an answer", retryable=True) from None
            except BaseException:
                if connection.transport is not None:
                    connection.transport.abort()
                raise
            answer = LeanAnswer(
                connection.status,
                _Headers(connection.headers),
                connection.chunks,
                connection.broken,
                connection.hint,
            )
            transport = connection.transport
            open_ = transport is not None and not transport.is_closing()
            if connection.reusable and open_ and len(idle) < self._keep:
                idle.append(connection)
                return answer
            if transport is not None:
                transport.close()
            return answer

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop, self._stall),
                    host,
                    port,
                    ssl=self._context if tls else None,
                    server_hostname=host if tls else None,
                )
        except ssl.SSLCertVerificationError:
            raise TransferError(
                "read: TLS certificate verification failed; pass --ca-bundle PATH to trust a "
                "private CA",
                retryable=False,
            ) from None
        except ssl.SSLError as exc:
            raise TransferError(f"read: TLS error: {exc}", retryable=False) from None
        except TimeoutError:
            raise TransferError(
                f"read: cannot connect to {host}:{port} (timed out)", retryable=True
            ) from None
        except UnicodeError:  # an empty or overlong label, as the resolver reads it
            raise TransferError("read: redirected to a malformed host name") from None
        except OSError as exc:
            raise TransferError(
                f"read: cannot connect to {host}:{port} ({exc.strerror or exc})", retryable=True
            ) from None
        return protocol

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()


def _quoted(text: str) -> str:
    """``text`` with what a URL may not carry percent-encoded (most are plain already)."""
    return text if _PLAIN.fullmatch(text) else quote(text, safe=_TARGET_SAFE)


def _absolute(base: str, location: str) -> str:
    """``location`` resolved against ``base``, its path and query percent-encoded where they
    must be (its host is left alone: an international name is encoded for the connection)."""
    parts = urlsplit(location.strip())
    path, query = _quoted(parts.path), _quoted(parts.query)
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        # Absolute already (a CDN's address): nothing to join.
        return urlunsplit((parts.scheme, parts.netloc, path, query, ""))
    return urljoin(base, urlunsplit((parts.scheme, parts.netloc, path, query, "")))


def _request_head(
    authority: str, target: str, user_agent: str, headers: Mapping[str, str]
) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent}"]
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0"):
            raise TransferError(f"read: header {name!r} holds a line break", retryable=False)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _origin(text: str) -> _Origin:
    """What a connection to ``text`` (``scheme://authority``) needs; TransferError when it
    cannot be reached (no http or https, no host, a malformed name), ValueError for a port
    that is no number or a broken IPv6 literal."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TransferError(f"read: cannot follow a redirect to a {scheme or 'relative'} URL")
    host = parts.hostname
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise TransferError("read: redirected to a malformed host name") from None
    port = parts.port or (443 if scheme == "https" else 80)
    authority = parts.netloc.rpartition("@")[2]
    if not authority.isascii():
        authority = host if parts.port is None else f"{host}:{parts.port}"
    return _Origin(text, scheme, host, port, authority, origin_of_parts(parts))

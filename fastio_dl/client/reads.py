"""An open read: the Content-Range it answered with, and its body as chunks whose network
errors become :class:`ShortReadError` (a broken or stalled body, resumed by the caller)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

import aiohttp

from fastio_dl.errors import ShortReadError

STALL_HINT = "raise --stall-timeout for very slow links"


class Whole(Protocol):
    """An answer read whole (:class:`fastio_dl.client.lean.LeanAnswer`)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def chunks(self) -> list[bytes]: ...
    @property
    def broken(self) -> str | None: ...
    @property
    def hint(self) -> str | None: ...


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    if not value or not value.lower().startswith("bytes "):
        return None
    spec = value[6:].strip()
    span, _, total = spec.partition("/")
    start, sep, end = span.partition("-")
    if not sep:
        return None
    try:
        return ContentRange(int(start), int(end), None if total in ("*", "") else int(total))
    except ValueError:
        return None


class ReadStream:
    """An open read: status, headers of interest, and chunks that map network errors.

    Its answer is aiohttp's, streamed, or a small read's (:mod:`fastio_dl.client.lean`),
    already whole: its chunks, then its break if it broke."""

    def __init__(self, response: aiohttp.ClientResponse | Whole, stall_timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.content_length = response.content_length
        self.content_range = parse_content_range(response.headers.get("Content-Range"))
        self._stall_timeout = stall_timeout
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        if not isinstance(self._response, aiohttp.ClientResponse):
            for chunk in self._response.chunks:
                self.received += len(chunk)
                yield chunk
            if self._response.broken is not None:
                raise ShortReadError(self._response.broken, self._response.hint)
            self._check_length()
            return
        content = self._response.content
        try:
            # readchunk hands over buffered chunks as they are (readany would join them: a copy)
            while True:
                chunk, _ = await content.readchunk()
                if not chunk:
                    if content.at_eof():
                        break
                    continue
                self.received += len(chunk)
                yield chunk
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise ShortReadError(
                f"read stalled: no data for {self._stall_timeout:g} s after {self.received} bytes",
                STALL_HINT,
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise ShortReadError(
                f"connection broke after {self.received} bytes ({type(exc).__name__})"
            ) from exc
        self._check_length()

    def _check_length(self) -> None:
        if self.content_length is not None and self.received < self.content_length:
            raise ShortReadError(f"body ended after {self.received} of {self.content_length} bytes")


def origin_of(url: str) -> tuple[str, str, int | None]:
    return origin_of_parts(urlsplit(url))


def origin_of_parts(parts: SplitResult) -> tuple[str, str, int | None]:
    """A split URL's origin: scheme, host, port (ValueError for a port that is no number)."""
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)

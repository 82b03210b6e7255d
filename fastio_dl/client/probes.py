"""``doctor``'s requests: one GET each, no retry, and what came back as it came back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from fastio_dl.client.answers import decoded
from fastio_dl.client.reads import origin_of
from fastio_dl.client.retries import describe_network_error
from fastio_dl.client.session import ApiSession


@dataclass
class Probe:
    """One request as ``doctor`` reports it: what came back, nothing interpreted."""

    status: int | None
    headers: dict[str, str]
    body: Any  # the JSON answer, or None
    size: int  # bytes of the body read
    seconds: float
    tls: str | None  # the TLS version, None on plain HTTP
    redirects: list[tuple[int, bool]]  # (status, to another origin) for each hop followed
    error: str | None = None  # the request did not complete (connection, TLS, timeout)


async def probe(
    client: ApiSession,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    bearer: bool = True,
    limit: int = 1 << 20,
) -> Probe:
    """GET ``url`` once, no retry, and keep what ``doctor`` shows (at most ``limit`` bytes)."""
    sent = dict(headers or {})
    if bearer and client.auth.token:
        sent["Authorization"] = f"Bearer {client.auth.token}"
    started = time.monotonic()
    try:
        async with client._session.get(
            url, params=params, headers=sent, proxy=client._proxy, auto_decompress=False
        ) as resp:
            transport = resp.connection.transport if resp.connection else None
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            raw = await resp.content.read(limit)
            origin = origin_of(url)
            hops = [
                (r.status, origin_of(str(r.headers.get("Location", url))) != origin)
                for r in resp.history
            ]
            return Probe(
                resp.status,
                dict(resp.headers),
                decoded(raw),
                len(raw),
                time.monotonic() - started,
                ssl_object.version() if ssl_object is not None else None,
                hops,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Probe(
            None,
            {},
            None,
            0,
            time.monotonic() - started,
            None,
            [],
            client.redact(describe_network_error(exc)),
        )

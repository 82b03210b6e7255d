"""What an error answer means and how long to wait before asking again.

HTTP errors become the project's error types (branch on the status first, fastio-api.md
section 2); wait hints come from the body's ``retry_after_seconds``, ``Retry-After`` and the
rate window's reset (section 5); :class:`RetryPolicy` backs off with jitter within the user's
retry cap; :class:`RateGate` makes every API caller of a run wait out one rate limit together.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from fastio_dl.client.answers import error_code, error_text
from fastio_dl.config import Settings
from fastio_dl.errors import (
    AccessError,
    ApiError,
    PaymentRequiredError,
    TransferError,
    redact,
)

DEFAULT_RATE_LIMIT_WAIT = 60.0
T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransferError) and exc.retryable


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal" jitter: attempt n waits a random time between half of
    ``initial * 2**(n-1)`` and all of it (never less than half: a retry storm stays spread out
    but never comes back at once), capped by max_wait; a server's wait hint wins (also capped),
    plus up to a quarter of ``initial`` so that workers told "wait 5 s" do not return together."""

    retries: int
    initial: float
    max_wait: float

    def wait_after(self, exc: BaseException | None, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` failed with ``exc``."""
        hint = getattr(exc, "wait_hint", None)
        if hint is not None:
            # A little jitter so that many workers told "wait 5 s" do not return in lockstep.
            return float(min(self.max_wait, max(0.0, hint) + random.uniform(0, self.initial / 4)))
        ceiling = min(self.max_wait, self.initial * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def run(
        self,
        attempt: Callable[[int], Awaitable[T]],
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """``attempt(1)``; while it fails with a retryable error, ``attempt(2)`` and on, at
        most ``retries`` more, each after its wait (``on_retry(number, error, wait)`` first).

        The first attempt runs without tenacity: nearly every call succeeds at once, and an
        ``AsyncRetrying`` with its chain of actions cost about 30 us a call, some 7% of the
        event loop's time on 5,000 small files (tests.benchmarks B7). A retryable failure hands
        the attempts left to tenacity, numbered on from 2.
        """
        try:
            return await attempt(1)
        except Exception as exc:
            if self.retries < 1 or not is_retryable(exc):
                raise
            wait = self.wait_after(exc, 1)
            if on_retry is not None:
                on_retry(1, exc, wait)
        await asyncio.sleep(wait)

        def before_sleep(state: RetryCallState) -> None:
            failure = _failure(state)
            if on_retry is not None and failure is not None:
                sleep = state.next_action.sleep if state.next_action else 0.0
                on_retry(state.attempt_number + 1, failure, sleep)

        async for tried in AsyncRetrying(
            stop=stop_after_attempt(self.retries),
            wait=lambda state: self.wait_after(_failure(state), state.attempt_number + 1),
            retry=retry_if_exception(is_retryable),
            reraise=True,
            before_sleep=before_sleep,
        ):
            with tried:
                return await attempt(tried.retry_state.attempt_number + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retries, settings.backoff_initial, settings.max_retry_wait)


def _retry_after_from_body(body: Any) -> float | None:
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    params = error.get("params") if isinstance(error, Mapping) else None
    candidates: list[Any] = []
    if isinstance(params, Mapping):
        candidates.append(params.get("retry_after_seconds"))
    elif isinstance(params, list):
        for index, item in enumerate(params):
            if isinstance(item, Mapping):
                candidates.append(item.get("retry_after_seconds"))
            elif item == "retry_after_seconds" and index + 1 < len(params):
                candidates.append(params[index + 1])
    for value in candidates:
        try:
            if value is not None:
                return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


def _retry_after_header(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def wait_hint(
    status: int, headers: Mapping[str, str], body: Any, now: float | None = None
) -> float | None:
    """Seconds to wait, in the contract's order: body, Retry-After, limit expiry, 60 s (429)."""
    now = time.time() if now is None else now
    hint = _retry_after_from_body(body)
    if hint is None:
        hint = _retry_after_header(headers.get("Retry-After"), now)
    if hint is None:
        for name in ("x-ve-limit-expires", "X-Rate-Limit-Expiry"):
            raw = headers.get(name)
            if raw:
                try:
                    hint = max(0.0, float(raw) - now)
                    break
                except ValueError:
                    continue
    if hint is None and status == 429:
        hint = DEFAULT_RATE_LIMIT_WAIT
    return hint


_ACCESS_HINTS = {
    10545: "the token's user is not a member of this workspace; ask an owner to add them",
    115069: "this item is not shared with the token's user; ask its owner to share it",
    **dict.fromkeys(
        (10175, 10560, 10767, 10768, 10769, 10770),
        "outside the token's scope; create a token (API key) whose scope includes it",
    ),
}
_HINT_401 = (
    "the token is valid but this workspace, share or file refuses it; check the token's "
    "user has access"
)
_HINT_403 = (
    "the file may be restricted (DMCA, infected, or limited by its owner) or outside the "
    "token's scope"
)


def map_http_error(
    status: int, headers: Mapping[str, str], body: Any, what: str, *, on_read: bool = False
) -> Exception:
    """Turn an HTTP error answer into the project's error type (branch on status first).

    A 401 or 403 is an :class:`AccessError` for what was asked: whether the token itself is
    dead only the token check tells (:meth:`fastio_dl.client.auth.TokenKeeper.confirm`).
    """
    text = error_text(body) or STATUS_TEXT.get(status, "error")
    if status == 402:
        return PaymentRequiredError(
            f"{what}: HTTP 402 {text} (the account is out of credits)",
            "add credits to the Fast.io account, then run again",
        )
    if status in (401, 403):
        code = error_code(body)
        label = f"{what}: HTTP {status} {text}" + (f" (code {code})" if code is not None else "")
        hint = _ACCESS_HINTS.get(code or 0) or (_HINT_401 if status == 401 else _HINT_403)
        return AccessError(status, label, hint, code=code)
    return ApiError(
        status, f"{what}: HTTP {status} {text}", wait_hint=_hint_or_none(status, headers, body)
    )


def _hint_or_none(status: int, headers: Mapping[str, str], body: Any) -> float | None:
    # x-ve-limit-expires is the rate window's reset and rides on every answer: a wait hint for
    # a 429 only. A 503 backs off exponentially unless it names its own Retry-After (RFC 9110).
    if status == 429:
        return wait_hint(status, headers, body)
    if status == 503:
        return _retry_after_header(headers.get("Retry-After"), time.time())
    return None


STATUS_TEXT = {
    400: "bad request",
    401: "unauthorised",
    403: "forbidden",
    404: "not found",
    408: "request timeout",
    409: "conflict",
    422: "unprocessable",
    425: "too early",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


class RateGate:
    """One gate for every API caller of a run (fastio-api.md section 5).

    A 429 on any API call, or an answer saying the window has no requests left
    (``x-ve-limit-avail: 0``), closes it until the wait has passed: every caller waits once,
    instead of each finding the limit for itself. Reads are not gated; transfers already
    running go on. O(1) per call: one comparison when the gate is open.
    """

    def __init__(self, jitter: float) -> None:
        self._until = 0.0  # time.monotonic() when the gate opens again
        self._jitter = jitter
        self.holds = 0  # how many times the gate closed (tests, debugging)

    def hold(self, seconds: float) -> None:
        if seconds > 0:
            self.holds += 1
            self._until = max(self._until, time.monotonic() + seconds)

    async def wait(self) -> None:
        delay = self._until - time.monotonic()
        while delay > 0:
            # A little jitter so that the callers held do not all come back in the same instant.
            await asyncio.sleep(delay + random.uniform(0, min(self._jitter, delay / 10)))
            delay = self._until - time.monotonic()


def limit_header(headers: Mapping[str, str], *names: str) -> float | None:
    for name in names:
        raw = headers.get(name)
        if raw:
            try:
                return float(raw)
            except ValueError:
                continue
    return None


def network_error(what: str, exc: BaseException) -> TransferError:
    # A certificate that does not verify will not verify on the next attempt either.
    retryable = not isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError))
    return TransferError(f"{what}: {redact(describe_network_error(exc))}", retryable=retryable)


def describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed; pass --ca-bundle PATH to trust a private CA"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS error: {exc}"
    return f"{type(exc).__name__}: {exc}"

"""ApiSession: one run's connection to the API and its JSON calls.

It opens the aiohttp session (TLS, proxies, timeouts), and makes each JSON call through the
rate gate with retries, the envelope check and the error mapping; the token it sends is the
:class:`~fastio_dl.client.auth.TokenKeeper`'s. The endpoints are :class:`FastioClient`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit
from urllib.request import (  # type: ignore[attr-defined]
    getproxies_environment,
    proxy_bypass_environment,
)

import aiohttp

from fastio_dl import __version__
from fastio_dl.client.answers import checked_envelope, decoded, error_text, payload_of
from fastio_dl.client.auth import TokenKeeper
from fastio_dl.client.lean import LeanReads
from fastio_dl.client.retries import (
    STATUS_TEXT,
    RateGate,
    RetryPolicy,
    describe_network_error,
    limit_header,
    map_http_error,
    network_error,
)
from fastio_dl.client.tls import verifying_context
from fastio_dl.config import Settings
from fastio_dl.credentials import OAUTH_CLIENT_ID, StoredLogin
from fastio_dl.errors import (
    AccessError,
    ApiError,
    AuthError,
    TransferError,
    expired_login_error,
    missing_token_error,
    redact,
)

PASSWORD_HEADER = "x-ve-password"
READ_BUFFER = 1024 * 1024
T = TypeVar("T")


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY)."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    if proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


class ApiSession:
    """The API's transport as fastio-dl uses it. One per run; every API call passes the rate
    gate; the token and its renewal are :attr:`auth`'s (see :class:`TokenKeeper`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        proxy: str | None = None,
        lean: LeanReads | None = None,
    ) -> None:
        self._session = session
        self._proxy = proxy
        # Small files' reads (see fastio_dl.client.lean); None: every read through aiohttp.
        self._lean = lean if proxy is None else None
        self._settings = settings
        self._base = settings.api_base.rstrip("/")
        self._policy = RetryPolicy.from_settings(settings)
        self.auth = TokenKeeper(settings, self)
        self.api_calls = 0
        self.gate = RateGate(jitter=max(0.05, settings.backoff_initial / 4))

    # -- lifecycle
    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, max_connections: int) -> AsyncIterator[Self]:
        context = verifying_context(settings.ca_bundle)
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, ssl=context, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.stall_timeout
        )
        user_agent = f"fastio-dl/{__version__}"
        lean = LeanReads(
            context,
            user_agent=user_agent,
            connect_timeout=settings.connect_timeout,
            stall_timeout=settings.stall_timeout,
            keep=max_connections,
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            read_bufsize=READ_BUFFER,
            headers={"User-Agent": user_agent},
            # Not trust_env: it re-reads ~/.netrc on every request. Proxies are resolved once.
            trust_env=False,
            # No cookies: the API authenticates by header, and the official CLI keeps no cookie
            # store either (reqwest without its "cookies" feature). A jar would filter its
            # cookies for every request, two per small file.
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            client = cls(session, settings, proxy=proxy_for(settings.api_base), lean=lean)
            try:
                await client.ensure_login()
                yield client
            finally:
                client.auth.cancel_check()
                lean.close()

    # -- the token (see TokenKeeper)
    @property
    def login(self) -> StoredLogin | None:
        return self.auth.login

    @property
    def warnings(self) -> list[str]:
        """For the CLI to show once the run is over (taken off the list as shown)."""
        return self.auth.warnings

    @property
    def refreshes(self) -> int:
        return self.auth.refreshes

    async def ensure_login(self) -> None:
        await self.auth.ensure_login()

    def start_token_check(self) -> asyncio.Future[None]:
        return self.auth.start_check()

    async def check_token(self) -> None:
        what = "token check"
        if not self.auth.token:
            return  # an anonymous run (public File Share links): no token to check
        try:
            body = await self._get_json(f"{self._base}/user/auth/check/", what, on_401="dead")
        except AuthError:
            raise
        except AccessError as exc:
            if exc.status == 401:
                raise AuthError(
                    f"the API refused the token: {exc.message}",
                    "check the token (--token, FASTIO_TOKEN or FASTIO_API_KEY)",
                ) from None
            return  # 403: the token authenticates; it only may not read its user's details
        if not isinstance(payload_of(body).get("user", {}), Mapping):
            raise TransferError(f"{what}: unrecognised answer (keys: {', '.join(body)})")

    async def post_refresh(self, login: StoredLogin) -> Mapping[str, Any]:
        assert login.refresh_token is not None
        form = {
            "grant_type": "refresh_token",
            "refresh_token": str(login.refresh_token),
            "client_id": OAUTH_CLIENT_ID,
        }
        url = f"{self._base}/oauth/token/"
        self.api_calls += 1
        try:
            async with self._session.post(url, data=form, proxy=self._proxy) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthError(
                f"renewing the stored login: {self.redact(describe_network_error(exc))}",
                "check the network and --api-base, then run again",
            ) from exc
        body = decoded(raw)
        if status >= 400 or not isinstance(body, Mapping):
            # OAuth errors say {"error": "invalid_grant", "error_description": ...}
            described = body.get("error_description") if isinstance(body, Mapping) else None
            text = str(described or error_text(body) or STATUS_TEXT.get(status, "no JSON answer"))
            raise expired_login_error(login.profile, f"HTTP {status} {self.redact(text)}")
        # A plain OAuth answer; some builds may wrap it in the usual envelope.
        return payload_of(body)

    # -- helpers
    def redact(self, text: str) -> str:
        return redact(text)

    def _auth_headers(self) -> dict[str, str]:
        if not self.auth.token:
            raise missing_token_error()
        return {"Authorization": f"Bearer {self.auth.token}"}

    def _fileshare_headers(self) -> dict[str, str]:
        """A File Share call: the API token if there is one (the link may be public), and the
        link password only ever in ``x-ve-password``."""
        token = self.auth.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        password = self._settings.fileshare_password
        if password:
            headers[PASSWORD_HEADER] = str(password)
        return headers

    def _url(self, context: str, context_id: str, node: str, action: str) -> str:
        return f"{self._base}/{context}/{context_id}/storage/{node}/{action}/"

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._policy.run(lambda _number: call())

    def _note_limits(self, headers: Mapping[str, str]) -> None:
        """An answer that says the window has no requests left holds new API calls until its
        reset (capped by --max-retry-wait, so a server clock far ahead cannot stall a run)."""
        avail = limit_header(headers, "x-ve-limit-avail", "X-Rate-Limit-Available")
        if avail is None or avail > 0:
            return
        expires = limit_header(headers, "x-ve-limit-expires", "X-Rate-Limit-Expiry")
        if expires is not None:
            self.gate.hold(min(self._settings.max_retry_wait, expires - time.time()))

    # -- JSON calls
    async def _get_json(
        self,
        url: str,
        what: str,
        params: Mapping[str, str] | None = None,
        *,
        accept_statuses: frozenset[int] = frozenset(),
        on_401: str = "check",
        fileshare: bool = False,
    ) -> Mapping[str, Any]:
        """GET a JSON answer, retried by the run's policy. ``accept_statuses``: error statuses
        whose answer the caller reads itself. ``on_401``: "check" asks whether the token died.
        ``fileshare``: a File Share call (token optional, link password, no redirects; a 401
        there is the link's refusal, not a sign of a dead token)."""
        if not self.auth.token and not fileshare:
            raise missing_token_error()
        check_401 = on_401 == "check" and not fileshare
        return await self._retry(
            lambda: self._get_json_once(url, what, params, accept_statuses, check_401, fileshare)
        )

    async def _get_json_once(
        self,
        url: str,
        what: str,
        params: Mapping[str, str] | None,
        accept_statuses: frozenset[int],
        check_401: bool,
        fileshare: bool,
    ) -> Mapping[str, Any]:
        await self.gate.wait()
        token = self.auth.token
        headers = self._fileshare_headers() if fileshare else {"Authorization": f"Bearer {token}"}
        self.api_calls += 1
        try:
            async with self._session.get(
                url,
                params=params,
                headers=headers,
                proxy=self._proxy,
                # A File Share's link password must not follow a redirect anywhere.
                allow_redirects=not fileshare,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise network_error(what, exc) from exc
        if fileshare and 300 <= status < 400:
            raise TransferError(
                f"{what}: the server answered HTTP {status} (a redirect); not followed, "
                "so that the link password goes nowhere else"
            )
        self._note_limits(resp_headers)
        body = decoded(raw)
        accepted = status in accept_statuses
        if status >= 400 and not accepted:
            error = map_http_error(status, resp_headers, body, what)
            if status == 429 and isinstance(error, ApiError):
                # Every API caller waits out this one limit (the gate), not each its own.
                self.gate.hold(min(self._settings.max_retry_wait, error.wait_hint or 0.0))
                error.wait_hint = 0.0
            elif status == 401 and check_401:
                await self.auth.after_401(token, error)
            raise error
        return checked_envelope(body, status, what, refusal_expected=accepted)

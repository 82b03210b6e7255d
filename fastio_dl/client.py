"""FastioClient: auth, response envelope, details/list/requestread/read, error mapping.

The only module of the engine that touches aiohttp. Everything it raises is a
:class:`fastio_dl.errors.FastioDlError`; aiohttp exceptions never leak (their text can hold a
``?token=`` URL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import random
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import (  # type: ignore[attr-defined]
    getproxies_environment,
    proxy_bypass_environment,
)

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from fastio_dl import __version__
from fastio_dl.config import Settings
from fastio_dl.credentials import (
    OAUTH_CLIENT_ID,
    CredentialsError,
    Secret,
    StoredLogin,
    reread,
    write_back,
)
from fastio_dl.errors import (
    ApiError,
    AuthError,
    PaymentRequiredError,
    ShortReadError,
    TransferError,
    UsageError,
    expired_login_error,
    missing_token_error,
    redact,
    register_secret,
)


def _import_aiohttp_without_ca_store() -> None:
    """Import aiohttp without its import-time CA loading.

    aiohttp builds two SSL contexts when first imported, each reading the system CA store
    (about 17 ms apiece here), used only when a caller passes no context of its own. fastio-dl
    always passes its own (:meth:`FastioClient.open`), so those two are left empty: should one
    ever be used, it trusts nothing and TLS fails closed.
    """
    if "aiohttp" in sys.modules:
        return

    def skip(self: ssl.SSLContext) -> None:
        return None

    ssl.SSLContext.set_default_verify_paths = skip  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the C method again


_import_aiohttp_without_ca_store()


class CaOnFirstUseContext(ssl.SSLContext):
    """A verifying client context (certificate and host name required) that loads its CA
    certificates at its first TLS handshake: ``cafile`` if set, else the system store
    (SSL_CERT_FILE/SSL_CERT_DIR honoured). A run that makes no TLS connection (a plain-http
    mirror, the bundled emulator) then never parses them: about 20 ms here."""

    cafile: str | None = None
    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            if self.cafile is not None:
                self.load_verify_locations(cafile=self.cafile)
            else:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)


def check_ca_bundle(path: Path) -> None:
    """A CA bundle must be a readable PEM file with a certificate (its certificates are parsed
    at the first handshake): else one clear line now rather than a TLS error later."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read CA bundle {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"CA bundle {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")


import aiohttp  # noqa: E402  (after the shim above)

BULK_DETAILS_MAX = 25
LIST_PAGE_SIZE = 500
DEFAULT_RATE_LIMIT_WAIT = 60.0
READ_BUFFER = 1024 * 1024
T = TypeVar("T")


# ----------------------------------------------------------------------------- retry policy


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransferError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's wait hint wins (capped by max_wait)."""

    retries: int
    initial: float
    max_wait: float

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "wait_hint", None)
        if hint is not None:
            # A little jitter so that many workers told "wait 5 s" do not return in lockstep.
            return float(min(self.max_wait, max(0.0, hint) + random.uniform(0, self.initial / 4)))
        ceiling = min(self.max_wait, self.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def retrying(
        self, before_sleep: Callable[[RetryCallState], Any] | None = None
    ) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self.wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
            before_sleep=before_sleep,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retries, settings.backoff_initial, settings.max_retry_wait)


# ----------------------------------------------------------------------------- envelope


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("yes", "true"))


def payload_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload sits beside ``result``; some builds wrap it in ``response``."""
    inner = body.get("response")
    return inner if isinstance(inner, Mapping) else body


def error_text(body: Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        text = error.get("text") or error.get("message") or error.get("error_code")
        if text:
            return str(text)
    elif isinstance(error, str) and error:
        return error
    flat = body.get("error_message")
    return str(flat) if flat else None


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


def map_http_error(
    status: int, headers: Mapping[str, str], body: Any, what: str, *, on_read: bool = False
) -> Exception:
    """Turn an HTTP error answer into the project's error type (branch on status first)."""
    text = error_text(body) or _STATUS_TEXT.get(status, "error")
    if status == 402:
        return PaymentRequiredError(
            f"{what}: HTTP 402 {text} (the account is out of credits)",
            "add credits to the Fast.io account, then run again",
        )
    if status in (401, 403) and not on_read:
        hint = (
            "check the token (--token, FASTIO_TOKEN or FASTIO_API_KEY)"
            if status == 401
            else "check that the token's user may read this workspace or share"
        )
        return AuthError(f"{what}: HTTP {status} {text}", hint)
    return ApiError(
        status, f"{what}: HTTP {status} {text}", wait_hint=_hint_or_none(status, headers, body)
    )


def _hint_or_none(status: int, headers: Mapping[str, str], body: Any) -> float | None:
    if status == 429 or status in (503,):
        return wait_hint(status, headers, body)
    return None


_STATUS_TEXT = {
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


# ----------------------------------------------------------------------------- reads


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
    """An open read: status, headers of interest, and chunks that map network errors."""

    def __init__(self, response: aiohttp.ClientResponse, stall_timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.content_length = response.content_length
        self.content_range = parse_content_range(response.headers.get("Content-Range"))
        self._stall_timeout = stall_timeout
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
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
                "raise --stall-timeout for very slow links",
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise ShortReadError(
                f"connection broke after {self.received} bytes ({type(exc).__name__})"
            ) from exc
        if self.content_length is not None and self.received < self.content_length:
            raise ShortReadError(f"body ended after {self.received} of {self.content_length} bytes")


# ----------------------------------------------------------------------------- client


class FastioClient:
    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, *, proxy: str | None = None
    ) -> None:
        self._session = session
        self._proxy = proxy
        self._settings = settings
        self._base = settings.api_base.rstrip("/")
        self._token = settings.token
        self._policy = RetryPolicy.from_settings(settings)
        self._secrets: set[str] = {settings.token} if settings.token else set()
        register_secret(settings.token)
        self._login = settings.login
        if self._login is not None and self._login.refresh_token:
            self._secrets.add(self._login.refresh_token)
            register_secret(self._login.refresh_token)
        self._refresh_lock = asyncio.Lock()
        self.refreshes = 0  # OAuth refreshes done in this run
        self.warnings: list[str] = []  # for the CLI to show once the run is over
        self.api_calls = 0

    # -- lifecycle
    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, max_connections: int) -> AsyncIterator[FastioClient]:
        # Always a context of our own (never aiohttp's defaults, see above): verified, with the
        # system store (SSL_CERT_FILE/SSL_CERT_DIR honoured) or the --ca-bundle given.
        ssl_context = CaOnFirstUseContext(ssl.PROTOCOL_TLS_CLIENT)
        if settings.ca_bundle is not None:
            check_ca_bundle(settings.ca_bundle)
            ssl_context.cafile = str(settings.ca_bundle)
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, ssl=ssl_context, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.stall_timeout
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            read_bufsize=READ_BUFFER,
            headers={"User-Agent": f"fastio-dl/{__version__}"},
            # Not trust_env: it re-reads ~/.netrc on every request. Proxies are resolved once.
            trust_env=False,
        ) as session:
            client = cls(session, settings, proxy=proxy_for(settings.api_base))
            await client.ensure_login()
            yield client

    # -- stored logins (the official CLI's OAuth tokens)
    @property
    def login(self) -> StoredLogin | None:
        return self._login

    async def ensure_login(self) -> None:
        """Before the first call: renew a stored OAuth login that expired or nearly has."""
        login = self._login
        if login is None or not login.needs_refresh():
            return
        if login.refresh_token is None:
            if login.is_expired():
                raise expired_login_error(login.profile)
            return  # a few minutes left and nothing to renew it with: use it while it lasts
        await self.refresh_login(login.token)

    async def refresh_login(self, stale: str) -> bool:
        """Trade the stored refresh token for a new access token (``POST /oauth/token/``) and
        write both back to the official CLI's credentials file.

        ``stale`` is the token that was refused: when another task (or process) has renewed it
        meanwhile, that renewal is used instead of a second one. False when there is no stored
        login with a refresh token to renew.
        """
        async with self._refresh_lock:
            login = self._login
            if login is None or login.refresh_token is None:
                return False
            if self._token != stale:
                return True  # renewed while this task waited for the lock
            current = await asyncio.to_thread(reread, login)
            if current is not None and current.token != stale and not current.needs_refresh():
                self._adopt(current)  # another process (or the official CLI) renewed it
                return True
            if current is not None and current.refresh_token:
                login = current
            answer = await self._post_refresh(login)
            access = answer.get("access_token")
            if not isinstance(access, str) or not access:
                raise expired_login_error(login.profile, "the answer held no access_token")
            refresh = answer.get("refresh_token")
            refresh = refresh if isinstance(refresh, str) and refresh else None
            for secret in (access, refresh):
                if secret:
                    self._secrets.add(secret)
                    register_secret(secret)
            try:
                lifetime = int(answer.get("expires_in"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                lifetime = 3600  # the official CLI's logins last an hour
            expires_at = int(time.time()) + lifetime
            try:
                renewed = await asyncio.to_thread(write_back, login, access, refresh, expires_at)
            except (OSError, CredentialsError) as exc:
                # The run goes on with the new token, but the file still holds the old ones
                # (whose refresh token may now be spent): say so, loudly.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.warnings.append(
                    f"renewed the login of fastio-cli profile {login.profile} but could not "
                    f"store it in {login.path} ({reason}); run `fastio auth login` afterwards"
                )
                renewed = dataclasses.replace(
                    login,
                    token=Secret(access),
                    refresh_token=Secret(refresh) if refresh else login.refresh_token,
                    expires_at=expires_at,
                )
            self.refreshes += 1
            self._adopt(renewed)
            return True

    def _adopt(self, login: StoredLogin) -> None:
        self._login = login
        self._token = login.token
        self._secrets.add(login.token)
        register_secret(login.token)

    async def _post_refresh(self, login: StoredLogin) -> Mapping[str, Any]:
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
                f"renewing the stored login: {self.redact(_describe_network_error(exc))}",
                "check the network and --api-base, then run again",
            ) from exc
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if status >= 400 or not isinstance(body, Mapping):
            # OAuth errors say {"error": "invalid_grant", "error_description": ...}
            described = body.get("error_description") if isinstance(body, Mapping) else None
            text = str(described or error_text(body) or _STATUS_TEXT.get(status, "no JSON answer"))
            raise expired_login_error(login.profile, f"HTTP {status} {self.redact(text)}")
        # A plain OAuth answer; some builds may wrap it in the usual envelope.
        return payload_of(body)

    def redact(self, text: str) -> str:
        return redact(text, frozenset(self._secrets))

    def _network_error(self, what: str, exc: BaseException) -> TransferError:
        # A certificate that does not verify will not verify on the next attempt either.
        retryable = not isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError))
        return TransferError(
            f"{what}: {self.redact(_describe_network_error(exc))}", retryable=retryable
        )

    def _auth_headers(self) -> dict[str, str]:
        if not self._token:
            raise missing_token_error()
        return {"Authorization": f"Bearer {self._token}"}

    def _url(self, context: str, context_id: str, node: str, action: str) -> str:
        return f"{self._base}/{context}/{context_id}/storage/{node}/{action}/"

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._policy.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_json(
        self,
        url: str,
        what: str,
        params: Mapping[str, str] | None = None,
        *,
        accept_statuses: frozenset[int] = frozenset(),
    ) -> Mapping[str, Any]:
        headers = self._auth_headers()

        async def once() -> Mapping[str, Any]:
            self.api_calls += 1
            try:
                async with self._session.get(
                    url, params=params, headers=headers, proxy=self._proxy
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    resp_headers = resp.headers
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._network_error(what, exc) from exc
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if status >= 400 and status not in accept_statuses:
                raise map_http_error(status, resp_headers, body, what)
            if not isinstance(body, Mapping):
                raise TransferError(
                    f"{what}: the API answered HTTP {status} without a JSON object", retryable=True
                )
            if not _is_true(body.get("result")) and status not in accept_statuses:
                text = error_text(body) or "result is not true"
                raise ApiError(status if status >= 400 else 502, f"{what}: {text}")
            return body

        return await self._retry(once)

    # -- endpoints
    async def details(
        self, context: str, context_id: str, node_ids: list[str]
    ) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
        """Details of 1-25 nodes: (nodes, {node_id: error}) for the ones that did not resolve."""
        if not 1 <= len(node_ids) <= BULK_DETAILS_MAX:
            raise ValueError("details takes 1 to 25 ids")
        url = self._url(context, context_id, ",".join(node_ids), "details")
        body = await self._get_json(url, "node details", accept_statuses=frozenset({404}))
        payload = payload_of(body)
        nodes: list[Mapping[str, Any]] = []
        if isinstance(payload.get("nodes"), list):
            nodes = [n for n in payload["nodes"] if isinstance(n, Mapping)]
        elif isinstance(payload.get("node"), Mapping):
            nodes = [payload["node"]]
        errors: dict[str, str] = {}
        for entry in payload.get("errors") or []:
            if isinstance(entry, Mapping) and entry.get("node_id"):
                errors[_norm(str(entry["node_id"]))] = str(entry.get("message") or "not found")
        found = {_norm(str(n.get("id", ""))) for n in nodes}
        for node_id in node_ids:
            if _norm(node_id) not in found and _norm(node_id) not in errors:
                errors[_norm(node_id)] = error_text(body) or "not found"
        return nodes, errors

    async def list_folder(
        self, context: str, context_id: str, folder: str
    ) -> AsyncIterator[list[Mapping[str, Any]]]:
        """Yield pages of child nodes, following the cursor until it runs out."""
        url = self._url(context, context_id, folder, "list")
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = {"page_size": str(LIST_PAGE_SIZE), "sort_by": "name", "sort_dir": "asc"}
            if cursor:
                params["cursor"] = cursor
            body = await self._get_json(url, f"list folder {folder}", params)
            payload = payload_of(body)
            yield _list_items(payload)
            next_cursor = _next_cursor(payload)
            # Stop when the cursor is missing, empty, or repeats one already sent (a server loop).
            if not next_cursor or next_cursor == cursor or next_cursor in seen:
                return
            seen.add(next_cursor)
            cursor = next_cursor

    async def request_read(self, context: str, context_id: str, node: str) -> str:
        # Not retried blindly by the caller's replay: each attempt mints a fresh token anyway.
        body = await self._get_json(
            self._url(context, context_id, node, "requestread"), "read token"
        )
        token = payload_of(body).get("token")
        if not isinstance(token, str) or not token:
            raise TransferError("read token: the API answered without a token", retryable=True)
        self._secrets.add(token)
        register_secret(token)
        return token

    @asynccontextmanager
    async def open_read(
        self,
        context: str,
        context_id: str,
        node: str,
        *,
        token: str | None,
        start: int = 0,
        end: int | None = None,
        version_id: str | None = None,
    ) -> AsyncIterator[ReadStream]:
        """Open ``/read/`` (with ``?token=`` or the bearer header) from byte ``start``."""
        url = self._url(context, context_id, node, "read")
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        if token:
            params["token"] = token
        else:
            headers.update(self._auth_headers())
        if version_id:
            params["version_id"] = version_id
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            response = await self._session.get(
                url, params=params, headers=headers, proxy=self._proxy
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._network_error("read", exc) from exc
        try:
            if response.status >= 400:
                try:
                    raw = await response.read()
                    body: Any = json.loads(raw) if raw else None
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    body = None
                raise map_http_error(response.status, response.headers, body, "read", on_read=True)
            yield ReadStream(response, self._settings.stall_timeout)
        finally:
            response.release()


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY)."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    if proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _norm(node_id: str) -> str:
    return node_id.replace("-", "").lower()


def _list_items(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for key in ("nodes", "items", "files"):
        value = payload.get(key)
        if isinstance(value, Mapping):
            for inner in ("items", "nodes", "files"):
                if isinstance(value.get(inner), list):
                    value = value[inner]
                    break
        if isinstance(value, list):
            return [item for item in value if isinstance(item, Mapping)]
    return []


def _next_cursor(payload: Mapping[str, Any]) -> str | None:
    cursor = payload.get("next_cursor")
    pagination = payload.get("pagination")
    if not cursor and isinstance(pagination, Mapping):
        if pagination.get("has_more") is False:
            return None
        cursor = pagination.get("next_cursor")
    return str(cursor) if cursor else None


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed; pass --ca-bundle PATH to trust a private CA"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS error: {exc}"
    return f"{type(exc).__name__}: {exc}"

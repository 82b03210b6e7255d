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
    AccessError,
    ApiError,
    AuthError,
    ListingError,
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
from yarl import URL  # noqa: E402

BULK_DETAILS_MAX = 25
MAX_REDIRECTS = 5
PASSWORD_HEADER = "x-ve-password"
LIST_PAGE_SIZE = 500
LIST_PAGES_MAX = 100_000  # 50 million children: a server that never ends a listing is stopped
DEFAULT_RATE_LIMIT_WAIT = 60.0
TOKEN_RECHECK_EVERY = 5.0  # seconds: mid-run 401s check the token again at most this often
DEAD_TOKEN_CODES = frozenset({10011})  # a 401 with this code is about the token itself
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


def error_code(body: Any) -> int | None:
    """The API's numeric error code (``error.code``, or the flat variant's ``error_id``)."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    raw = error.get("code") if isinstance(error, Mapping) else body.get("error_id")
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        return None


# Hints for a refusal, by the API's error code (fastio-api.md section 2). A 401 with one of
# these says nothing about the token itself.
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
    dead only the token check tells (:meth:`FastioClient.confirm_token`).
    """
    text = error_text(body) or _STATUS_TEXT.get(status, "error")
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


def _limit_header(headers: Mapping[str, str], *names: str) -> float | None:
    for name in names:
        raw = headers.get(name)
        if raw:
            try:
                return float(raw)
            except ValueError:
                continue
    return None


class FastioClient:
    """The API as fastio-dl uses it. One per run; every API call passes the rate gate.

    The token is checked once at the start (:meth:`start_token_check`). A 401 on a later call
    checks it again (:meth:`confirm_token`, at most every TOKEN_RECHECK_EVERY seconds): if the
    token died the run stops (AuthError, exit 3), unless a stored OAuth login renews it
    (:meth:`refresh_login`): the new token then serves every later call and the refused call is
    made again. If the token is alive, only what was refused fails (AccessError).
    """

    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, *, proxy: str | None = None
    ) -> None:
        self._session = session
        self._proxy = proxy
        self._settings = settings
        self._base = settings.api_base.rstrip("/")
        self._token = settings.token
        self._policy = RetryPolicy.from_settings(settings)
        register_secret(settings.token)
        self._login = settings.login
        for secret in (
            self._login.refresh_token if self._login is not None else None,
            settings.fileshare_password,
        ):
            register_secret(secret)
        self._refresh_lock = asyncio.Lock()
        self.refreshes = 0  # OAuth refreshes done in this run
        self._renewed_midrun = False
        self.warnings: list[str] = []  # for the CLI to show once the run is over
        self.api_calls = 0
        self.gate = RateGate(jitter=max(0.05, settings.backoff_initial / 4))
        self._check: asyncio.Future[None] | None = None
        self._checked_at = 0.0

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
            try:
                yield client
            finally:
                if client._check is not None and not client._check.done():
                    client._check.cancel()

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
        register_secret(login.token)
        self._check, self._checked_at = None, 0.0  # a new token: a 401 checks it afresh

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
        return redact(text)

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

    def _fileshare_headers(self) -> dict[str, str]:
        """A File Share call: the API token if there is one (the link may be public), and the
        link password only ever in ``x-ve-password``."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        password = self._settings.fileshare_password
        if password:
            headers[PASSWORD_HEADER] = str(password)
        return headers

    def _url(self, context: str, context_id: str, node: str, action: str) -> str:
        return f"{self._base}/{context}/{context_id}/storage/{node}/{action}/"

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._policy.retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    def _note_limits(self, headers: Mapping[str, str]) -> None:
        """An answer that says the window has no requests left holds new API calls until its
        reset (capped by --max-retry-wait, so a server clock far ahead cannot stall a run)."""
        avail = _limit_header(headers, "x-ve-limit-avail", "X-Rate-Limit-Available")
        if avail is None or avail > 0:
            return
        expires = _limit_header(headers, "x-ve-limit-expires", "X-Rate-Limit-Expiry")
        if expires is not None:
            self.gate.hold(min(self._settings.max_retry_wait, expires - time.time()))

    # -- the token
    def start_token_check(self) -> asyncio.Future[None]:
        """Check the token once at the start of a run (``GET /user/auth/check/``), beside the
        run's first calls; a 401 anywhere meanwhile waits for this check's verdict."""
        if self._check is None:
            self._checked_at = time.monotonic()
            self._check = asyncio.ensure_future(self._check_token())
        return self._check

    async def confirm_token(self) -> None:
        """A 401 arrived: raise :class:`AuthError` if the token itself is dead.

        Concurrent 401s share one check, and a token found good is not checked again for
        TOKEN_RECHECK_EVERY seconds. A token found dead stays dead for the run.
        """
        check = self._check
        fresh = time.monotonic() - self._checked_at < TOKEN_RECHECK_EVERY
        if check is None or (check.done() and not fresh and check.exception() is None):
            self._check, self._checked_at = None, 0.0
            check = self.start_token_check()
        await asyncio.shield(check)

    async def _check_token(self) -> None:
        what = "token check"
        if not self._token:
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

    async def _renew(self, token: str | None) -> bool:
        """The token was found dead: a stored OAuth login may renew it, once per run (a second
        death means something else is wrong). True if it did."""
        if token is None or self._renewed_midrun:
            return False
        renewed = await self.refresh_login(token)  # its own AuthError says why it could not
        self._renewed_midrun = self._renewed_midrun or renewed
        return renewed

    async def _after_401(self, token: str | None, error: Exception) -> None:
        """Mid-run 401: the token dead stops the run (AuthError); renewed, the call is made
        again (a retryable error); alive, the caller raises ``error`` for what was refused.

        A dead-credential code proves the token dead at once; any other 401 asks the token
        check (shared, throttled: see confirm_token)."""
        if self._token != token:
            raise TransferError("the token was renewed", retryable=True, wait_hint=0)
        try:
            if isinstance(error, AccessError) and error.code in DEAD_TOKEN_CODES:
                raise AuthError(
                    f"the API refused the token: {error.message}",
                    "check the token (--token, FASTIO_TOKEN or FASTIO_API_KEY)",
                )
            await self.confirm_token()
        except AuthError:
            if await self._renew(token):
                raise TransferError("the token was renewed", retryable=True, wait_hint=0) from None
            raise

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
        """``fileshare``: a File Share call (token optional, link password, no redirects; a
        401 there is the link's refusal, not a sign of a dead token)."""
        if not self._token and not fileshare:
            raise missing_token_error()
        if fileshare:
            on_401 = "ignore"

        async def once() -> Mapping[str, Any]:
            await self.gate.wait()
            token = self._token
            headers = (
                self._fileshare_headers() if fileshare else {"Authorization": f"Bearer {token}"}
            )
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
                raise self._network_error(what, exc) from exc
            if fileshare and 300 <= status < 400:
                raise TransferError(
                    f"{what}: the server answered HTTP {status} (a redirect); not followed, "
                    "so that the link password goes nowhere else"
                )
            self._note_limits(resp_headers)
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if status >= 400 and status not in accept_statuses:
                error = map_http_error(status, resp_headers, body, what)
                if status == 429 and isinstance(error, ApiError):
                    # Every API caller waits out this one limit (the gate), not each its own.
                    self.gate.hold(min(self._settings.max_retry_wait, error.wait_hint or 0.0))
                    error.wait_hint = 0.0
                elif status == 401 and on_401 == "check":
                    await self._after_401(token, error)
                raise error
            if not isinstance(body, Mapping):
                raise TransferError(
                    f"{what}: the API answered HTTP {status} without a JSON object", retryable=True
                )
            result = body.get("result")
            if not _is_true(result) and status not in accept_statuses:
                # An authoritative refusal, even under HTTP 200: asking again changes nothing.
                if "result" not in body:
                    text = f"unrecognised answer (no result; keys: {', '.join(map(str, body))})"
                else:
                    text = error_text(body) or f"the API answered result {result!r}"
                raise ApiError(status, f"{what}: {text}")
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
        nodes = _node_payload(payload)
        if nodes is None:
            if _is_true(body.get("result")):
                raise ApiError(
                    200,
                    "node details: unrecognised answer "
                    f"(keys: {', '.join(sorted(map(str, payload)))})",
                )
            nodes = []
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
        """Yield pages of child nodes until a page that is provably the last.

        Raises :class:`ListingError` for an answer not understood, or one that does not prove
        the folder's end: the caller must never take what it got so far for the whole folder.
        """
        url = self._url(context, context_id, folder, "list")
        what = f"listing {folder}"
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(LIST_PAGES_MAX):
            params = {"page_size": str(LIST_PAGE_SIZE), "sort_by": "name", "sort_dir": "asc"}
            if cursor:
                params["cursor"] = cursor
            body = await self._get_json(url, what, params)
            payload = payload_of(body)
            try:
                page = parse_listing(payload, cursor)
            except ValueError as exc:
                raise self._listing_error(what, str(exc), body) from None
            yield page.items
            if page.cursor is None:
                return
            if page.cursor in seen:
                raise self._listing_error(
                    what, f"the server sent cursor {page.cursor!r} a second time (a loop)", body
                )
            seen.add(page.cursor)
            cursor = page.cursor
        raise ListingError(f"{what}: more than {LIST_PAGES_MAX} pages; stopped")

    def _listing_error(self, what: str, why: str, body: Any) -> ListingError:
        message = f"{what}: {why}"
        if self._settings.debug:
            message += f"; answer shape: {json.dumps(shape_of(body))}"
        return ListingError(
            message,
            "the API answered in a shape fastio-dl does not know; run with --debug to see it "
            "and report it",
        )

    async def versions(self, context: str, context_id: str, node: str) -> list[Mapping[str, Any]]:
        """A file's versions, as the API lists them (``fileshare``: the shared file's)."""
        if context == "fileshare":
            url = f"{self._base}/fileshare/{context_id}/storage/versions/"
            body = await self._get_json(url, "versions", fileshare=True)
        else:
            body = await self._get_json(
                self._url(context, context_id, node, "versions"), "versions"
            )
        versions = payload_of(body).get("versions")
        if not isinstance(versions, list):
            raise TransferError(
                f"versions of {node}: unrecognised answer (no 'versions' list; keys: "
                f"{', '.join(sorted(map(str, payload_of(body)))) or 'none'})"
            )
        return [v for v in versions if isinstance(v, Mapping)]

    async def read_note(
        self, context: str, context_id: str, node: str, version_id: str | None = None
    ) -> str:
        """A note's markdown (``readnote``); notes have no bytes through ``read``."""
        params = {"version_id": version_id} if version_id else None
        body = await self._get_json(
            self._url(context, context_id, node, "readnote"), f"note {node}", params
        )
        content = payload_of(body).get("content")
        if not isinstance(content, str):
            raise TransferError(f"note {node}: unrecognised answer (no 'content' text)")
        return content

    async def fileshare_file(self, fileshare_id: str) -> Mapping[str, Any]:
        """The file a File Share links to: ``details`` -> ``fileshare.file`` (a node object)."""
        url = f"{self._base}/fileshare/{fileshare_id}/details/"
        what = f"File Share {fileshare_id}"
        try:
            body = await self._get_json(url, what, fileshare=True)
        except (AuthError, AccessError) as exc:
            if isinstance(exc, PaymentRequiredError):
                raise
            # A refused link says nothing about the token: this reference fails, not the run.
            hint = (
                "check the link password (FASTIO_FILESHARE_PASSWORD or --password-file)"
                if self._settings.fileshare_password
                else "a link with a password needs FASTIO_FILESHARE_PASSWORD or --password-file"
            )
            raise TransferError(f"{exc.message}; {hint}") from None
        share = payload_of(body).get("fileshare")
        file = share.get("file") if isinstance(share, Mapping) else None
        if not isinstance(file, Mapping):
            raise TransferError(f"{what}: unrecognised answer (no fileshare.file)")
        return file

    async def request_read(
        self, context: str, context_id: str, node: str, *, version_id: str | None = None
    ) -> str:
        # Not retried blindly by the caller's replay: each attempt mints a fresh token anyway.
        params = {"version_id": version_id} if version_id else None
        body = await self._get_json(
            self._url(context, context_id, node, "requestread"), "read token", params
        )
        token = payload_of(body).get("token")
        if not isinstance(token, str) or not token:
            raise TransferError("read token: the API answered without a token", retryable=True)
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
        """Open ``/read/`` (with ``?token=`` or the bearer header) from byte ``start``.

        ``version_id`` pins the content: a file replaced during the run is read as listed.
        The bytes are taken as they are stored (``Accept-Encoding: identity``, no
        decompression): the size and hash the API announced are those of the stored bytes.

        A File Share (``context`` ``fileshare``) reads ``/fileshare/ID/storage/read/`` (or the
        version's read path) with the optional bearer and the link password; such a read
        follows a redirect only within the same origin, since the password header goes along.
        """
        params: dict[str, str] = {}
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        bearer = self._token
        fileshare = context == "fileshare"
        if fileshare:
            path = f"versions/{version_id}/read" if version_id else "read"
            url = f"{self._base}/fileshare/{context_id}/storage/{path}/"
            headers.update(self._fileshare_headers())
        else:
            url = self._url(context, context_id, node, "read")
            if token:
                params["token"] = token
            else:
                headers.update(self._auth_headers())
            if version_id:
                params["version_id"] = version_id
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            response = await self._get_read(url, params, headers, same_origin_only=fileshare)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._network_error("read", exc) from exc
        try:
            if 300 <= response.status < 400:
                raise TransferError(
                    f"read: HTTP {response.status} redirect to another origin not followed "
                    "(it would carry the File Share's link password there)"
                )
            if response.status >= 400:
                try:
                    raw = await response.read()
                    body: Any = json.loads(raw) if raw else None
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    body = None
                error = map_http_error(
                    response.status, response.headers, body, "read", on_read=True
                )
                if response.status == 401 and not token and not fileshare:
                    await self._after_401(bearer, error)  # a dead API token stops the run
                raise error
            yield ReadStream(response, self._settings.stall_timeout)
        finally:
            response.release()

    async def _get_read(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        *,
        same_origin_only: bool,
    ) -> aiohttp.ClientResponse:
        """GET a read; with ``same_origin_only`` redirects are followed by hand, only within
        the first URL's origin (a 3xx elsewhere is handed back as it is)."""
        if not same_origin_only:
            return await self._session.get(
                url, params=params, headers=headers, proxy=self._proxy, auto_decompress=False
            )
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.get(
                url,
                params=params,
                headers=headers,
                proxy=self._proxy,
                auto_decompress=False,
                allow_redirects=False,
            )
            location = response.headers.get("Location")
            if not (300 <= response.status < 400) or not location:
                return response
            target = str(response.url.join(URL(location)))
            if _origin(target) != origin:
                return response
            response.release()
            url, params = target, {}
        raise TransferError(f"read: more than {MAX_REDIRECTS} redirects")


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
    client: FastioClient,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    bearer: bool = True,
    limit: int = 1 << 20,
) -> Probe:
    """GET ``url`` once, no retry, and keep what ``doctor`` shows (at most ``limit`` bytes)."""
    sent = dict(headers or {})
    if bearer and client._token:
        sent["Authorization"] = f"Bearer {client._token}"
    started = time.monotonic()
    try:
        async with client._session.get(
            url, params=params, headers=sent, proxy=client._proxy, auto_decompress=False
        ) as resp:
            transport = resp.connection.transport if resp.connection else None
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            raw = await resp.content.read(limit)
            origin = _origin(url)
            hops = [
                (r.status, _origin(str(r.headers.get("Location", url))) != origin)
                for r in resp.history
            ]
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return Probe(
                resp.status,
                dict(resp.headers),
                body,
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
            client.redact(_describe_network_error(exc)),
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY)."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    if proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _norm(node_id: str) -> str:
    return node_id.replace("-", "").lower()


_CHILD_KEYS = ("nodes", "items", "files")
_CURSOR_KEYS = ("next_cursor", "nextCursor")
_MORE_KEYS = ("has_more", "hasMore")
# Names that smell of pagination: an answer carrying one we do not read may be telling us of a
# next page in a way we do not understand.
_PAGING_WORDS = ("cursor", "continu", "next", "page_token", "pagetoken")


@dataclass(frozen=True)
class ListingPage:
    """One page of a folder listing: its children, and the cursor of the next page (None: this
    page is the last, and the answer said so)."""

    items: list[Mapping[str, Any]]
    cursor: str | None


def parse_listing(
    payload: Mapping[str, Any], sent: str | None, page_size: int = LIST_PAGE_SIZE
) -> ListingPage:
    """Read one listing answer strictly (fastio-api.md section 4).

    The children are an array (or an object of nodes keyed by id) under ``nodes``, ``items`` or
    ``files``, possibly one level deeper (``nodes: {items: [...]}``). Only an explicit empty array
    means an empty folder. The next page is ``next_cursor`` at the top level or under
    ``pagination``; without one, the page is the last only if nothing says otherwise: a
    ``has_more: true``, a full page, or a pagination-like key this client does not read are
    errors. Raises :class:`ValueError` with the reason; the caller names the folder.
    """
    items = _children(payload)
    pagination = payload.get("pagination")
    scopes: list[Mapping[str, Any]] = [payload]
    if isinstance(pagination, Mapping):
        scopes.append(pagination)
    cursor: str | None = None
    has_more: bool | None = None
    for scope in scopes:
        for key in _CURSOR_KEYS:
            value = scope.get(key)
            if cursor is None and isinstance(value, (str, int)) and not isinstance(value, bool):
                cursor = str(value) or None
        for key in _MORE_KEYS:
            if key in scope and has_more is None:
                has_more = _is_true(scope[key])
    if has_more is False:
        return ListingPage(items, None)
    if cursor is not None and cursor != sent:
        return ListingPage(items, cursor)
    # No next cursor (or the one just sent, which some servers repeat on the last page).
    if has_more:
        raise ValueError("the answer says there is more (has_more) but gives no cursor")
    unknown = sorted(
        f"{'pagination.' if scope is pagination else ''}{key}"
        for scope in scopes
        for key, value in scope.items()
        if key not in _CURSOR_KEYS
        and value not in (None, "", False)
        and any(word in key.lower() for word in _PAGING_WORDS)
    )
    if unknown:
        raise ValueError(f"a next page may be under a key this client does not read: {unknown}")
    if len(items) >= page_size:
        raise ValueError(f"a full page of {len(items)} with no cursor for the next one")
    return ListingPage(items, None)


def _children(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for key in _CHILD_KEYS:
        if key not in payload:
            continue
        value = payload[key]
        if isinstance(value, Mapping):
            inner = next((value[k] for k in _CHILD_KEYS if k in value), None)
            if inner is not None:
                value = inner
        nodes = _node_list(value)
        if nodes is None:
            raise ValueError(f"{key!r} holds {_shape_name(value)}, not a list of nodes")
        return nodes
    raise ValueError(f"unrecognised answer (keys: {', '.join(sorted(map(str, payload)))})")


def _node_list(value: Any) -> list[Mapping[str, Any]] | None:
    """An array of node objects, or an object of them keyed by id; None for anything else.

    An empty object is not an empty folder: it is as likely a shape not understood."""
    if isinstance(value, list):
        return value if all(isinstance(item, Mapping) for item in value) else None
    if isinstance(value, Mapping) and value:
        if not all(isinstance(node, Mapping) for node in value.values()):
            return None
        return [node if "id" in node else {**node, "id": key} for key, node in value.items()]
    return None


def _shape_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an empty object" if not value else f"an object (keys: {', '.join(map(str, value))})"
    return "an empty list" if value == [] else f"a {type(value).__name__}"


def shape_of(value: Any, depth: int = 0) -> Any:
    """An answer's shape with every value replaced by its type (``--debug``: no data shown)."""
    if isinstance(value, Mapping):
        if depth >= 4:
            return "{...}"
        keys = list(value)
        out = {str(k): shape_of(value[k], depth + 1) for k in keys[:12]}
        if len(keys) > 12:
            out["..."] = f"{len(keys) - 12} more keys"
        return out
    if isinstance(value, list):
        return [shape_of(value[0], depth + 1), f"{len(value)} items"] if value else []
    return "null" if value is None else type(value).__name__


def _node_payload(payload: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The nodes of a details answer: ``nodes`` (array or id-keyed object) or ``node``."""
    if "nodes" in payload:
        return _node_list(payload["nodes"]) if payload["nodes"] != [] else []
    node = payload.get("node")
    return [node] if isinstance(node, Mapping) else None


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

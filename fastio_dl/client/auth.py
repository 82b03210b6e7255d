"""The run's API token: a stored OAuth login renewed before the run or when the token dies
mid-run, the token check, and what a 401 means (fastio-api.md sections 1 and 2).

A 401 is overloaded: a dead credential, but also "not a member of this workspace" or "not shared
with you". So a 401 on one call proves nothing about the token: only the token check
(``GET /user/auth/check/``) or a dead-credential code does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Protocol

from fastio_dl.config import Settings
from fastio_dl.credentials import (
    CredentialsError,
    Secret,
    StoredLogin,
    reread,
    write_back,
)
from fastio_dl.errors import (
    AccessError,
    AuthError,
    TransferError,
    expired_login_error,
    register_secret,
)

TOKEN_RECHECK_EVERY = 5.0  # seconds: mid-run 401s check the token again at most this often
DEAD_TOKEN_CODES = frozenset({10011})  # a 401 with this code is about the token itself


class TokenCalls(Protocol):
    """The two requests the keeper needs; the session makes them."""

    async def check_token(self) -> None:
        """``GET /user/auth/check/``: :class:`AuthError` if the API refuses the token."""

    async def post_refresh(self, login: StoredLogin) -> Mapping[str, Any]:
        """``POST /oauth/token/`` with the login's refresh token: the answer's payload."""


class TokenKeeper:
    """The token every API call sends, and what keeps it alive.

    The token is checked once at the start (:meth:`start_check`). A 401 on a later call checks
    it again (:meth:`confirm`, at most every TOKEN_RECHECK_EVERY seconds): if the token died
    the run stops (AuthError, exit 3), unless a stored OAuth login renews it
    (:meth:`refresh_login`): the new token then serves every later call and the refused call is
    made again. If the token is alive, only what was refused fails (AccessError).
    """

    def __init__(self, settings: Settings, calls: TokenCalls) -> None:
        self.token = settings.token
        self.login = settings.login
        for secret in (
            settings.token,
            self.login.refresh_token if self.login is not None else None,
            settings.fileshare_password,
        ):
            register_secret(secret)
        self._calls = calls
        self._refresh_lock = asyncio.Lock()
        self.refreshes = 0  # OAuth refreshes done in this run
        self._renewed_midrun = False
        self.warnings: list[str] = []  # for the CLI to show once the run is over
        self._check: asyncio.Future[None] | None = None
        self._checked_at = 0.0

    # -- stored logins (the official CLI's OAuth tokens)
    async def ensure_login(self) -> None:
        """Before the first call: renew a stored OAuth login that expired or nearly has."""
        login = self.login
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
            login = self.login
            if login is None or login.refresh_token is None:
                return False
            if self.token != stale:
                return True  # renewed while this task waited for the lock
            current = await asyncio.to_thread(reread, login)
            if current is not None and current.token != stale and not current.needs_refresh():
                self._adopt(current)  # another process (or the official CLI) renewed it
                return True
            if current is not None and current.refresh_token:
                login = current
            self._adopt(await self._renewed(login))
            self.refreshes += 1
            return True

    async def _renewed(self, login: StoredLogin) -> StoredLogin:
        answer = await self._calls.post_refresh(login)
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
            return await asyncio.to_thread(write_back, login, access, refresh, expires_at)
        except (OSError, CredentialsError) as exc:
            # The run goes on with the new token, but the file still holds the old ones
            # (whose refresh token may now be spent): say so, loudly.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.warnings.append(
                f"renewed the login of fastio-cli profile {login.profile} but could not "
                f"store it in {login.path} ({reason}); run `fastio auth login` afterwards"
            )
            return dataclasses.replace(
                login,
                token=Secret(access),
                refresh_token=Secret(refresh) if refresh else login.refresh_token,
                expires_at=expires_at,
            )

    def _adopt(self, login: StoredLogin) -> None:
        self.login = login
        self.token = login.token
        register_secret(login.token)
        self._check, self._checked_at = None, 0.0  # a new token: a 401 checks it afresh

    # -- the token check
    def start_check(self) -> asyncio.Future[None]:
        """Check the token once at the start of a run (``GET /user/auth/check/``), beside the
        run's first calls; a 401 anywhere meanwhile waits for this check's verdict."""
        if self._check is None:
            self._checked_at = time.monotonic()
            self._check = asyncio.ensure_future(self._calls.check_token())
        return self._check

    def cancel_check(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()

    async def confirm(self) -> None:
        """A 401 arrived: raise :class:`AuthError` if the token itself is dead.

        Concurrent 401s share one check, and a token found good is not checked again for
        TOKEN_RECHECK_EVERY seconds. A token found dead stays dead for the run.
        """
        check = self._check
        fresh = time.monotonic() - self._checked_at < TOKEN_RECHECK_EVERY
        if check is None or (check.done() and not fresh and check.exception() is None):
            self._check, self._checked_at = None, 0.0
            check = self.start_check()
        await asyncio.shield(check)

    async def _renew(self, token: str | None) -> bool:
        """The token was found dead: a stored OAuth login may renew it, once per run (a second
        death means something else is wrong). True if it did."""
        if token is None or self._renewed_midrun:
            return False
        renewed = await self.refresh_login(token)  # its own AuthError says why it could not
        self._renewed_midrun = self._renewed_midrun or renewed
        return renewed

    async def after_401(self, token: str | None, error: Exception) -> None:
        """Mid-run 401: the token dead stops the run (AuthError); renewed, the call is made
        again (a retryable error); alive, the caller raises ``error`` for what was refused.

        ``token`` is the one the refused call sent. A dead-credential code proves the token
        dead at once; any other 401 asks the token check (shared, throttled: see confirm)."""
        if self.token != token:
            raise TransferError("the token was renewed", retryable=True, wait_hint=0)
        try:
            if isinstance(error, AccessError) and error.code in DEAD_TOKEN_CODES:
                raise AuthError(
                    f"the API refused the token: {error.message}",
                    "check the token (--token, FASTIO_TOKEN or FASTIO_API_KEY)",
                )
            await self.confirm()
        except AuthError:
            if await self._renew(token):
                raise TransferError("the token was renewed", retryable=True, wait_hint=0) from None
            raise

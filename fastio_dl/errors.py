"""Errors and exit codes, in one place.

Hierarchy::

    FastioDlError                 one line for the user + a hint; carries its ExitCode
    ├── UsageError                bad option, reference or manifest (exit 2)
    ├── AuthError                 no token, or the token itself is refused (exit 3)
    │   └── PaymentRequiredError  402: out of credits, stops the run (exit 3)
    ├── LockedError               another run holds the destination lock (exit 4)
    └── TransferError             one file failed; the run goes on (exit 1 at the end)
        ├── ApiError              an HTTP error answered by the API or the read endpoint
        │   ├── AccessError       401/403 on one workspace, share, folder or file (the token
        │   │                     is fine: it may not read that one)
        │   └── ListingError      a folder listing not understood, or not provably complete
        ├── IntegrityError        size or hash mismatch after a complete read
        ├── ShortReadError        the body broke off or stalled (retried, resumed)
        ├── DiskSpaceError        not enough room for a file
        └── WriteError            a local write failed (ENOSPC, EIO): new files stop

This module imports nothing from the package so that every other module may use it.
"""

from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; documented in the README and stable."""

    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    LOCKED = 4
    INTERRUPTED = 130
    OUTPUT_CLOSED = 141  # a reader of stdout or stderr went away (128 + SIGPIPE)
    TERMINATED = 143


class FastioDlError(Exception):
    """An error the CLI reports as one line (plus an optional hint), never a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def describe(exc: FastioDlError) -> str:
    """An error as one line for a file's record: what went wrong, then what to do."""
    return f"{exc.message}; {exc.hint}" if exc.hint else exc.message


class UsageError(FastioDlError):
    exit_code = ExitCode.USAGE


class AuthError(FastioDlError):
    exit_code = ExitCode.AUTH


class PaymentRequiredError(AuthError):
    pass


def missing_token_error() -> AuthError:
    """The one message for a run without any API token."""
    return AuthError(
        "no API token",
        "pass --token, set FASTIO_TOKEN or FASTIO_API_KEY (create an API key in the Fast.io "
        "web app under Settings), or log in with `fastio auth login` (the official CLI)",
    )


def expired_login_error(profile: str, why: str | None = None) -> AuthError:
    """A stored OAuth login that is over and cannot be renewed here."""
    what = f"the stored login expired (fastio-cli profile {profile})"
    return AuthError(
        what + (f"; refreshing it failed: {why}" if why else ""),
        "run `fastio auth login`, or use an API key (--token, FASTIO_TOKEN or FASTIO_API_KEY)",
    )


class LockedError(FastioDlError):
    exit_code = ExitCode.LOCKED


class TransferError(FastioDlError):
    """A failure of one file. ``retryable`` tells the retry policy whether to try again."""

    retryable = False

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        retryable: bool | None = None,
        wait_hint: float | None = None,
    ) -> None:
        super().__init__(message, hint)
        if retryable is not None:
            self.retryable = retryable
        #: seconds the server asked us to wait before the next attempt, if it said so
        self.wait_hint = wait_hint


# Statuses worth another attempt (API contract, section 5).
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class ApiError(TransferError):
    def __init__(
        self,
        status: int,
        message: str,
        hint: str | None = None,
        *,
        wait_hint: float | None = None,
    ) -> None:
        super().__init__(message, hint, retryable=status in RETRYABLE_STATUSES, wait_hint=wait_hint)
        self.status = status


class AccessError(ApiError):
    """A 401 or 403 on one reference or file, after the token itself was found good.

    401 is overloaded on Fast.io: besides a dead credential it means "not a member of this
    workspace" (10545) or "not shared with your account" (115069); so a refusal fails what was
    refused, and the run goes on.
    """

    def __init__(
        self, status: int, message: str, hint: str | None = None, *, code: int | None = None
    ) -> None:
        super().__init__(status, message, hint)
        self.code = code  # the API's error code, when it gave one


class ListingError(ApiError):
    """A listing answer that is not understood or does not prove the folder's end.

    Never read as "empty" or "done": that folder fails, and ``sync --delete`` deletes nothing.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(200, message, hint)


class IntegrityError(TransferError):
    """The bytes read do not match the size or hash the API announced."""

    retryable = True


class ShortReadError(TransferError):
    """The body ended (or the connection broke) before all bytes arrived."""

    retryable = True


class DiskSpaceError(TransferError):
    pass


class WriteError(TransferError):
    """A local write failed (ENOSPC, EIO, permission): stops new files from starting."""


_TOKEN_QUERY = re.compile(r"(?i)(token=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")

# The run's API token(s): one, or a few when a token is refreshed. Read tokens are never added:
# they only travel as ``?token=``, which the pattern above hides, so redaction costs the same
# at the millionth file as at the first (a per-token list made it grow with every file).
_SECRETS: list[str] = []


def register_secret(secret: str | None) -> None:
    """Remember an API token so that :func:`redact` hides it everywhere."""
    if secret and len(secret) >= 4 and secret not in _SECRETS:
        _SECRETS.append(secret)


def redact(text: str, secrets: tuple[str, ...] | frozenset[str] = ()) -> str:
    """Remove bearer capabilities: API tokens, ``token=`` query values and bearer headers."""
    for secret in (*secrets, *_SECRETS):
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    text = _TOKEN_QUERY.sub(r"\1REDACTED", text)
    return _BEARER.sub(r"\1***", text)


def human_bytes(n: float) -> str:
    """``1.5 MiB``: sizes in messages and progress lines (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover

"""One file over one stream: attempts, resume, retries, the pump from the body to the sink.

:class:`Fetcher` holds what every transfer of a run shares (settings, client, reporter, retry
policy, the network slots, the rate limiter); the pipeline (:mod:`fastio_dl.transfer`) and
segmented downloads (:mod:`fastio_dl.segments`) both fetch through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastio_dl.client import FastioClient, ReadStream, RetryPolicy
from fastio_dl.config import Settings
from fastio_dl.errors import (
    ApiError,
    FastioDlError,
    IntegrityError,
    ShortReadError,
    TransferError,
    WriteError,
)
from fastio_dl.events import FileProgress, FileRetry, FileStarted, Notice, Reporter
from fastio_dl.models import PlanItem
from fastio_dl.storage import MemoryPart, PartFile

WRITE_BLOCK = 4 * 1024 * 1024
Part = MemoryPart | PartFile


@dataclass
class FetchState:
    """One file's fetch across its attempts: the read token, and the bytes moved."""

    token: str | None
    refreshed: bool = False  # a fresh read token was minted after a refusal (once per file)
    bearer_refused: bool = False  # a read with the API token was refused, then a token minted
    transferred: int = 0


class RateLimiter:
    """``--limit-rate``: one token bucket shared by every transfer of the run."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = max(64 * 1024, rate / 10)  # at most a tenth of a second ahead of the rate
        self._allowance = float(self.burst)
        self._last = time.monotonic()

    async def take(self, amount: int) -> None:
        now = time.monotonic()
        self._allowance = min(self.burst, self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= amount
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self.rate)


class NotStarted(Exception):
    """The run stopped starting files while this one waited for a network slot."""


class Fetcher:
    """Fetches files for one run; shared by every transfer, so slots and the rate are too."""

    def __init__(self, settings: Settings, client: FastioClient, reporter: Reporter) -> None:
        self.settings = settings
        self.client = client
        self.reporter = reporter
        self.retry = RetryPolicy.from_settings(settings)
        self.net_slots = asyncio.Semaphore(settings.concurrency)  # transfers on the wire at once
        self.limiter = RateLimiter(settings.limit_rate) if settings.limit_rate > 0 else None
        # --read-mode auto: set once a refused bearer read succeeded with a minted token; the
        # rest of the run mints directly instead of being refused once per file.
        self.reads_want_tokens = False
        #: why new files must not start (the engine's ledger says), or None; and how to say
        #: that none may start from now on (a write failed)
        self.stop_reason: Callable[[], str | None] = lambda: None
        self.stop: Callable[[str], None] = lambda reason: None

    def may_start(self) -> None:
        """Called with a network slot just taken, before a file's first byte: a file that
        waited for its slot while the run stopped starting files (a write error) does not
        start."""
        if self.stop_reason():
            raise NotStarted()

    async def mint(self, item: PlanItem, *, force: bool = False) -> str | None:
        """A read token for ``item`` where the read mode wants one (``force``: whatever it is)."""
        if item.remote.size == 0:
            return None  # an empty file needs no read
        if item.remote.context == "fileshare":
            return None  # no read tokens there: the link (and its password) is the capability
        if self.settings.read_mode != "token" and not force and not self.reads_want_tokens:
            return None  # bearer/auto: /read/ takes the API token itself, one round trip less
        remote = item.remote
        return await self.client.request_read(
            remote.context, remote.context_id, remote.node_id, version_id=remote.read_version
        )

    async def fetch_stream(self, item: PlanItem, final: Path, part: Part, token: str | None) -> int:
        """Fetch a file over one stream into ``part``, resuming where it stands; verify and
        commit. Returns the bytes moved over the network."""
        remote = item.remote
        start = part.resumable_offset()
        self.reporter.emit(FileStarted(item.key, str(final), remote.size, start))
        state = FetchState(token=token)

        async def attempt(number: int) -> None:
            first = start if number == 1 else None
            # Only the network part holds one of the -j slots: hashing and writing overlap the
            # next transfer instead of delaying it.
            async with self.net_slots:
                if first is not None and not state.transferred:
                    self.may_start()
                try:
                    await self._attempt(item, part, state, first)
                except WriteError as exc:
                    # Said before the slot is free: no file waiting for it starts.
                    self.stop(f"an earlier write failed ({exc})")
                    raise
            try:
                await part.verify()
            except IntegrityError:
                await self.restart(item, part)
                raise

        try:
            await self.retry.run(attempt, self.report_retry(item.key, str(final)))
            warning = await part.verify()
            if warning:
                self.reporter.emit(Notice("warning", f"{final}: {warning}"))
            await part.commit()
            self.learn(state)
        except asyncio.CancelledError:
            await part.close()  # keep .part and sidecar: the next run resumes
            raise
        except IntegrityError:
            await part.discard()
            raise
        except BaseException:
            await part.close()
            raise
        return state.transferred

    async def _attempt(
        self, item: PlanItem, part: Part, state: FetchState, first: int | None
    ) -> None:
        remote = item.remote
        offset = part.offset if first is None else first
        if not part.is_open or first is not None:
            await part.open(offset)
            offset = part.offset
        if offset >= remote.size:
            return  # everything is already here (a resumed .part or an empty file): just verify
        try:
            async with self.client.open_read(
                remote.context,
                remote.context_id,
                remote.node_id,
                token=state.token,
                start=offset,
                version_id=remote.read_version,
                whole=self._whole(part, remote.size),
            ) as stream:
                if offset > 0:
                    cr = stream.content_range
                    if stream.status == 200 or cr is None:
                        # The server ignored Range: take the full body from byte zero.
                        await self.restart(item, part)
                    elif cr.start != offset:
                        await self.restart(item, part)
                        raise ShortReadError(
                            f"asked for bytes from {offset}, the server sent from {cr.start}; "
                            "restarting from zero"
                        )
                await self._stream(item, part, stream, state)
        except ApiError as exc:
            await self.after_read_error(item, state, exc)
        if part.offset < remote.size:
            raise ShortReadError(f"body ended after {part.offset} of {remote.size} bytes")

    def _whole(self, part: Part, size: int) -> int | None:
        """A small file's answer is read whole (it is kept in memory anyway), up to the whole
        file even when resuming (a server that ignores Range sends it all again; the pump
        refuses more than is left), unless ``--limit-rate`` paces it: the pace must hold on
        the wire, not after the bytes came."""
        return size if isinstance(part, MemoryPart) and self.limiter is None else None

    async def pump(
        self,
        item: PlanItem,
        stream: ReadStream,
        state: FetchState,
        room: int,
        block: int,
        write: Callable[[list[bytes]], Awaitable[None]],
        too_much: str,
    ) -> None:
        """Move a body into ``write`` in batches of ``block`` bytes, refusing more than ``room``.

        Bytes that arrived before a break are good: they are written even when the read fails,
        so the retry resumes after them.
        """
        batch: list[bytes] = []
        batched = received = 0
        emit = self.reporter.emit
        try:
            async for chunk in stream.chunks():
                received += len(chunk)
                if received > room:
                    raise IntegrityError(too_much)
                batch.append(chunk)
                batched += len(chunk)
                state.transferred += len(chunk)
                emit(FileProgress(item.key, len(chunk)))
                if self.limiter is not None:
                    await self.limiter.take(len(chunk))
                if batched >= block:  # block 0: every chunk at once
                    # Handed over before the await: a write cut short (a cancel) must not see
                    # the same chunks again below; the sink counts what it really took.
                    handed, batch, batched = batch, [], 0
                    await write(handed)
        finally:
            if batch:
                with contextlib.suppress(FastioDlError):
                    await write(batch)

    def report_retry(self, key: int, label: str) -> Callable[[int, BaseException, float], None]:
        """A retry policy's ``on_retry`` hook that tells the reporter about the retry."""

        def on_retry(number: int, exc: BaseException, wait: float) -> None:
            self.reporter.emit(
                FileRetry(key, label, number, self.client.redact(str(exc)), round(wait, 2))
            )

        return on_retry

    def learn(self, state: FetchState) -> None:
        """A file read with a token minted after its bearer read was refused: from now on,
        mint first (auto mode)."""
        if state.bearer_refused and not self.reads_want_tokens:
            self.reads_want_tokens = True
            self.reporter.emit(
                Notice("info", "reads want a read token here: minting one per file from now on")
            )

    async def after_read_error(self, item: PlanItem, state: FetchState, exc: ApiError) -> None:
        # A bearer read refused with 403 may only mean "this endpoint wants a read token"
        # (nothing public says which status it uses): in auto mode, try one before failing.
        refused = exc.status == 401 or (
            exc.status == 403 and state.token is None and self.settings.read_mode == "auto"
        )
        fileshare = item.remote.context == "fileshare"
        if (
            refused
            and not state.refreshed
            and self.settings.read_mode != "bearer"
            and not fileshare
        ):
            # Read tokens expire (about 2 h), and a bearer read may be refused: mint one
            # fresh read token per file, then give up.
            state.refreshed = True
            state.bearer_refused = state.token is None
            state.token = await self.mint(item, force=True)
            raise TransferError(
                f"read refused ({exc.status}); minted a fresh read token",
                retryable=True,
                wait_hint=0,
            ) from exc
        raise exc

    async def restart(self, item: PlanItem, part: Part) -> None:
        """Start ``part`` again from byte zero (what was counted as progress is taken back)."""
        if part.offset:
            self.reporter.emit(FileProgress(item.key, -part.offset))
        await part.open(0)

    async def _stream(
        self, item: PlanItem, part: Part, stream: ReadStream, state: FetchState
    ) -> None:
        size = item.remote.size
        too_much = f"the server sent more than the {size} bytes the API announced"
        await self.pump(item, stream, state, size - part.offset, WRITE_BLOCK, part.write, too_much)

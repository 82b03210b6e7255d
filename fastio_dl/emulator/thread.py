"""Run an emulator on 127.0.0.1 in a background thread, with its own event loop."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from fastio_dl.emulator.server import Emulator

HOST = "127.0.0.1"
T = TypeVar("T")


class EmulatorThread:
    """Run an :class:`Emulator` on 127.0.0.1 in a background thread with its own event loop.

    The CLI under test calls ``asyncio.run`` itself, so the server cannot share its loop.
    """

    def __init__(
        self, emulator: Emulator, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.emulator = emulator
        self.port = port
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fastio-emulator", daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{HOST}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + "/current"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.emulator.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, HOST, self.port, ssl_context=self.ssl_context, backlog=1024
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the server's loop (safe mutation of data, faults, counters)."""
        future = asyncio.run_coroutine_threadsafe(_call(func), self.loop)
        return future.result(30)

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(func: Callable[[], T]) -> T:
    return func()

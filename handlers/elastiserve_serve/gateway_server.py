"""Run a :class:`~.gateway.Gateway` on its own event loop in a background thread.

Why a thread: ``elastiserve serve`` starts TorchServe with a blocking context manager that
waits until the model's workers are ready (minutes for a large bundle on a small board). The
gateway listens from the start, so a readiness probe meanwhile gets a 503 with the reason
rather than a refused connection, and ``/v2/health/live`` already answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aiohttp import web

from .gateway import Gateway

__all__ = ["GatewayServer"]


class GatewayServer:
    """``start()`` binds ``host:port`` (0: a free port) and returns the port; ``stop()``
    finishes the requests in flight (up to ``grace_s``) and closes the pool to TorchServe."""

    def __init__(self, gateway: Gateway, host: str, port: int, grace_s: float = 10.0) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        self._thread = threading.Thread(target=self._run, name="elastiserve-gateway",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"gateway did not start listening in {timeout_s:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"gateway could not listen on {self.host}:{self.port}: "
                               f"{self._error}") from self._error
        return self.port

    def stop(self) -> None:
        """Idempotent; returns once the gateway's loop has finished."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(self.grace_s + 5.0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported by start(); the thread just ends
            self._error = self._error or error
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        runner = web.AppRunner(self.gateway.app(), access_log=None,
                               shutdown_timeout=self.grace_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            bound = runner.addresses[0]
            self.port = int(bound[1])
            self._stop = asyncio.Event()
            self._started.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

"""Status updates from synchronous progress callbacks, awaited one after the other in the order they came.

The link and the uploader report progress through plain callbacks, but a status update is a coroutine
(it writes SQLite and emits a signal). Fired as independent tasks they could overtake each other and a
client would see 30 % after 40 %; here one consumer awaits them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable


class OrderedUpdates:
    """Runs the coroutines handed to it one after the other, in the order they came."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Awaitable[None]] = asyncio.Queue()
        self._worker = asyncio.ensure_future(self._work())

    def __call__(self, update: Awaitable[None]) -> None:
        self._queue.put_nowait(update)

    async def drain(self) -> None:
        """Until every update handed in so far has been awaited."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            update = await self._queue.get()
            try:
                await update
            finally:
                self._queue.task_done()

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while not self._queue.empty():  # never awaited: close them so Python does not warn
            update = self._queue.get_nowait()
            if asyncio.iscoroutine(update):
                update.close()


@contextlib.asynccontextmanager
async def ordered_updates() -> AsyncIterator[OrderedUpdates]:
    pump = OrderedUpdates()
    try:
        yield pump
    finally:
        await pump.close()

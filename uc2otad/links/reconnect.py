"""Try to reopen a lost port, with backoff, until it works, the policy gives up, or someone stops it.

Kept apart from the link, as aioesphomeapi keeps ``ReconnectLogic`` apart from its connection: the link
says "connect once" and "lost", this class decides when to try again. A HAT that is unplugged for an
hour is found within ``max_delay`` of coming back, without hammering the USB bus meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from uc2otad.errors import LinkError
from uc2otad.retry import RetryPolicy

_LOGGER = logging.getLogger(__name__)

#: a daemon keeps looking for its HAT as long as it runs: first try after 0.5 s (a USB-serial adapter
#: re-enumerates in well under a second after a glitch), then doubling up to 10 s between tries
RECONNECT_POLICY = RetryPolicy(attempts=sys.maxsize, first_delay=0.5, factor=2.0, max_delay=10.0)


class ReconnectLogic:
    """Runs ``connect`` after each delay of ``policy`` until it succeeds.

    ``connect`` raises :class:`~uc2otad.errors.LinkError` for a failed try; anything else is a bug and
    ends the loop with an error log. ``on_give_up`` runs when the policy has no delay left.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], Awaitable[None]],
        *,
        policy: RetryPolicy = RECONNECT_POLICY,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._connect = connect
        self._policy = policy
        self._on_give_up = on_give_up
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start trying in the background, unless already trying."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"reconnect {self.name}")

    async def stop(self) -> None:
        """Stop trying and wait until the current try has been undone; safe to call twice."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves, not just the task we stopped

    async def _run(self) -> None:
        started = time.monotonic()
        for attempt, delay in enumerate(self._policy.delays(), start=1):
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except LinkError as err:
                log = _LOGGER.warning if attempt == 1 else _LOGGER.debug
                log("%s: reconnect attempt %d failed: %s", self.name, attempt, err)
                continue
            except Exception:
                _LOGGER.exception("%s: reconnect attempt %d: unexpected error, giving up", self.name, attempt)
                break
            _LOGGER.info(
                "%s: reconnected in %0.3fs after %d attempts", self.name, time.monotonic() - started, attempt
            )
            return
        _LOGGER.error("%s: gave up reconnecting after %0.1fs", self.name, time.monotonic() - started)
        if self._on_give_up is not None:
            self._on_give_up()

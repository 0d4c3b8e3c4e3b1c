"""sd_notify for ``Type=notify``: READY once the bus name is owned, STATUS, WATCHDOG, STOPPING.

Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op. The watchdog pings at half
the interval systemd asks for in ``WATCHDOG_USEC`` and only when it asks: a daemon with nothing to do
must not wake up the Raspberry Pi for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os

import systemd.daemon

_LOGGER = logging.getLogger(__name__)


def notify(*lines: str) -> None:
    """Send ``lines`` (``READY=1``, ``STATUS=…``) to the service manager, if there is one."""
    if os.environ.get("NOTIFY_SOCKET"):
        systemd.daemon.notify("\n".join(lines))


def watchdog_interval() -> float | None:
    """Seconds between pings systemd wants (half of ``WATCHDOG_USEC``), or None if it wants none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def run_watchdog(interval: float) -> None:
    """Ping the watchdog from the event loop: a hung loop stops the pings, and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)

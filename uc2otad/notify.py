"""sd_notify for ``Type=notify``: READY once the bus name is owned, STATUS, WATCHDOG, STOPPING.

systemd-python's ``systemd.daemon.notify`` (libsystemd's sd_notify(3)) sends the ``KEY=value`` lines
to the socket named in ``NOTIFY_SOCKET`` (a path, or an abstract name starting with ``@``). Without
``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op. The watchdog pings at half the
interval systemd asks for in ``WATCHDOG_USEC``, and only when it asks: a daemon with nothing to do must
not wake up the Raspberry Pi for nothing. systemd-python does not wrap sd_watchdog_enabled(3), so
``WATCHDOG_USEC``/``WATCHDOG_PID`` are read here.
"""

from __future__ import annotations

import asyncio
import logging
import os

from systemd.daemon import notify as sd_notify

_LOGGER = logging.getLogger(__name__)


def notify(*lines: str) -> None:
    """Send ``lines`` (``READY=1``, ``STATUS=…``) to the service manager, if there is one."""
    try:
        sd_notify("\n".join(lines))
    except OSError as err:  # the manager went away; nothing to tell it then
        _LOGGER.debug("notify: %s", err)


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

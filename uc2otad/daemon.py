"""``uc2otad``: the daemon's entry point — settings, logging, engine, D-Bus, systemd notification.

The settings become the engine through the composition root, :mod:`uc2otad.compose`.

Start-up order matters to clients: the status store is opened and reconciled first, then the bus name
is requested, and only once it is owned does systemd hear READY=1, so a client started "after" uc2otad
can call it at once. SIGTERM or SIGINT sends STOPPING=1, leaves the bus and closes the store (exit 0).
Losing the bus connection (dbus-daemon stopped or restarted, the connection broken) is an error: the
daemon logs it, stops the engine and exits 1, so that ``Restart=on-failure`` starts it again on the new
bus; a daemon left running without its bus name would serve nobody (issue 14, D1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
from pathlib import Path

from dbus_fast import BusType

from uc2otad import __version__, settings
from uc2otad.api.service import BusNameTakenError, DBusService
from uc2otad.compose import build_engine
from uc2otad.engine.store import JobRecord
from uc2otad.errors import ConfigError, Uc2otadError
from uc2otad.logs import setup_logging
from uc2otad.notify import notify, run_watchdog, watchdog_interval

_LOGGER = logging.getLogger(__name__)

#: exit status for a configuration the daemon refuses (CONTRACT.md §5)
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uc2otad", description="Firmware-update daemon for openUC2 microscopes"
    )
    bus = parser.add_mutually_exclusive_group()
    bus.add_argument(
        "--system", dest="bus", action="store_const", const="system", help="system bus (default)"
    )
    bus.add_argument("--session", dest="bus", action="store_const", const="session", help="session bus")
    parser.add_argument("--config", type=Path, default=settings.SYSTEM_CONFIG_FILE, help="config file")
    parser.add_argument("--serial-port", dest="serial.port", metavar="URL", help="the CAN HAT's serial port")
    parser.add_argument("--baud", dest="serial.baud", type=int, metavar="N", help="its baud rate")
    parser.add_argument(
        "--capture", dest="serial.capture", metavar="FILE", help="record the link's traffic (JSON lines)"
    )
    parser.add_argument(
        "--can-interface",
        dest="can.interface",
        metavar="NAME",
        help="python-can interface of a direct CAN link",
    )
    parser.add_argument("--can-channel", dest="can.channel", metavar="CHANNEL", help="its channel (can0)")
    parser.add_argument("--firmware-server", dest="firmware.server", metavar="URL", help="firmware server")
    parser.add_argument("--state-dir", dest="daemon.state_dir", metavar="DIR", help="state directory")
    parser.add_argument("--cache-dir", dest="firmware.cache_dir", metavar="DIR", help="firmware cache")
    parser.add_argument(
        "--log-level", dest="daemon.log_level", metavar="L", help="debug, info, warning, error"
    )
    parser.add_argument("--version", action="version", version=f"uc2otad {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if "." in key and value is not None}
    for key in ("daemon.state_dir", "firmware.cache_dir", "serial.capture"):
        if flags.get(key):
            flags[key] = str(Path(flags[key]).absolute())
    try:
        config, persisted = settings.load(args.config, flags)
    except ConfigError as err:
        print(f"uc2otad: invalid configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.daemon_log_level)
    bus_type = BusType.SESSION if args.bus == "session" else BusType.SYSTEM
    try:
        return asyncio.run(run(config, persisted, bus_type))
    except KeyboardInterrupt:
        return 0


async def run(config: settings.Settings, persisted: dict[str, object], bus_type: BusType) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    engine = build_engine(config, persisted)
    service = DBusService(engine, bus_type)
    try:
        interrupted = await engine.start()
        await service.start()
    except (BusNameTakenError, Uc2otadError) as err:
        _LOGGER.error("uc2otad: cannot start: %s", err)
        await engine.stop()
        return EXIT_FAILURE
    notify("READY=1", f"STATUS=idle; {len(interrupted)} interrupted job(s) reconciled")
    if engine.reconciling is not None:
        engine.reconciling.add_done_callback(functools.partial(_notify_confirmed, len(interrupted)))
    _LOGGER.info("uc2otad %s ready; state=%s", __version__, config.daemon_state_dir)

    interval = watchdog_interval()
    watchdog = asyncio.create_task(run_watchdog(interval)) if interval else None
    lost = await _until_stopped_or_lost(stop, service)

    if lost is None:
        notify("STOPPING=1")
        _LOGGER.info("uc2otad: stopping")
    else:
        notify(f"STATUS=lost its D-Bus connection: {lost}")
        _LOGGER.error(
            "uc2otad: lost its D-Bus connection (%s); exiting with status %d to be restarted",
            lost, EXIT_FAILURE,
        )  # fmt: skip
    if watchdog is not None:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    await service.stop()
    await engine.stop()
    return 0 if lost is None else EXIT_FAILURE


def _notify_confirmed(interrupted: int, asked: asyncio.Task[list[JobRecord]]) -> None:
    """systemctl status shows what asking the boards found (issue 15, D10)."""
    if asked.cancelled():
        return
    error = asked.exception()
    if error is not None:
        _LOGGER.error("uc2otad: asking the boards about interrupted updates failed", exc_info=error)
        return
    confirmed = len(asked.result())
    notify(f"STATUS=idle; {interrupted} interrupted job(s), {confirmed} found finished by their boards")


async def _until_stopped_or_lost(stop: asyncio.Event, service: DBusService) -> str | None:
    """Wait for SIGTERM/SIGINT (None) or the end of the bus connection (why it ended)."""
    stopping = asyncio.create_task(stop.wait())
    lost = asyncio.create_task(service.wait_lost())
    await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stopping, lost):
        task.cancel()
    await asyncio.wait({stopping, lost})
    if lost.cancelled():
        return None
    return lost.result()


if __name__ == "__main__":
    sys.exit(main())

"""``uc2otactl ports`` and ``flash-master``: the serial ports, and the master CAN HAT flashed over USB.

Main constraint: no status change of the flash may be missed, so ``flash-master`` subscribes to
USBFlashStatusChanged *before* it calls FlashMaster (the first steps follow within milliseconds) and
prints every step until "success" or "failed". Ctrl-C cancels the flash (Cancel 1). Progress is one
plain line per step, readable in a terminal and in a log alike.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant

from uc2otad.ctl.client import (
    DAEMON_OWNER_CHANGES,
    EXIT_FAILED,
    EXIT_NO_DAEMON,
    EXIT_OK,
    CtlError,
    DaemonClient,
    unwrap,
)
from uc2otad.ctl.interrupts import interrupts
from uc2otad.ctl.output import Outcome, table

#: the master's CAN id: Cancel(1) stops its USB flash
MASTER_CAN_ID = 1
USB_FLASH_SIGNALS = "type='signal',sender='org.openuc2.OTA1',member='USBFlashStatusChanged'"
_FINAL = ("success", "failed")


async def ports(client: DaemonClient, args: argparse.Namespace) -> Any:
    (found,) = await client.call("ListSerialPorts")
    if not args.json:
        rows = [
            (p["device"], p.get("description"), _usb_id(p), p.get("manufacturer"), p.get("serial_number"))
            for p in found
        ]
        table(("DEVICE", "DESCRIPTION", "VID:PID", "MANUFACTURER", "SERIAL"), rows)
        if not found:
            print("no serial ports found")
    return found


async def flash_master(client: DaemonClient, args: argparse.Namespace) -> Any:
    async def start() -> dict[str, Any]:
        (started,) = await client.call("FlashMaster", "a{sv}", _options(args))
        if not args.json:
            print(f"flashing the master CAN HAT over USB (port {started.get('port') or 'auto'})", flush=True)
        return dict(started)

    return await follow_flash(client, args, start)


async def follow_flash(
    client: DaemonClient, args: argparse.Namespace, start: Callable[[], Awaitable[dict[str, Any]]]
) -> Outcome:
    """Call ``start`` (a call that starts a USB flash of the master: FlashMaster, Rollback of CAN 1)
    having subscribed first, and follow the flash to its end; the final status is the outcome."""
    statuses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    daemon_gone = asyncio.Event()

    def on_message(message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        if message.member == "USBFlashStatusChanged":
            statuses.put_nowait(unwrap(message.body[0]))
        elif message.member == "NameOwnerChanged" and not message.body[2]:
            daemon_gone.set()

    client.bus.add_message_handler(on_message)
    try:
        with interrupts() as interrupted:
            await client.add_match(USB_FLASH_SIGNALS)
            await client.add_match(DAEMON_OWNER_CHANGES)
            await start()
            final = await _follow(client, statuses, interrupted, daemon_gone, show=not args.json)
    finally:
        client.bus.remove_message_handler(on_message)
    if not args.json and final.get("details"):
        print(f"  {final['details']}")
    return Outcome(final, EXIT_OK if final["status"] == "success" else EXIT_FAILED)


async def _follow(
    client: DaemonClient,
    statuses: asyncio.Queue[dict[str, Any]],
    interrupted: asyncio.Event,
    daemon_gone: asyncio.Event,
    *,
    show: bool,
) -> dict[str, Any]:
    """Print each status until a final one; a Ctrl-C cancels the flash once and keeps following it."""
    cancel_asked = False
    while True:
        next_status = asyncio.ensure_future(statuses.get())
        waits = {next_status, asyncio.ensure_future(daemon_gone.wait())}
        if not cancel_asked:
            waits.add(asyncio.ensure_future(interrupted.wait()))
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if next_status in done:
            status = next_status.result()
            if show:
                print(f"{status['progress']:3d}% {status['status']}: {status['message']}", flush=True)
            if status["status"] in _FINAL:
                return status
        elif daemon_gone.is_set():
            raise CtlError(
                "org.freedesktop.DBus.Error.NoReply", "uc2otad left the bus mid-flash", EXIT_NO_DAEMON
            )
        elif interrupted.is_set() and not cancel_asked:
            cancel_asked = True
            if show:
                print("cancelling the flash...", flush=True)
            await client.call("Cancel", "u", MASTER_CAN_ID)


def _options(args: argparse.Namespace) -> dict[str, Variant]:
    options: dict[str, Variant] = {}
    if args.port:
        options["port"] = Variant("s", args.port)
    if args.firmware:
        options["firmware"] = Variant("s", args.firmware)
    if args.erase:
        options["erase_flash"] = Variant("b", True)
    if args.no_reconnect:
        options["reconnect_after"] = Variant("b", False)
    return options


def _usb_id(port: dict[str, Any]) -> str | None:
    if port.get("vid") is None or port.get("pid") is None:
        return None
    return f"{port['vid']:04X}:{port['pid']:04X}"


def add_arguments(flash: argparse.ArgumentParser) -> None:
    """``flash-master``'s options (CONTRACT.md §4 FlashMaster options)."""
    flash.add_argument(
        "--port", help="the port to flash (default: the HAT link's, else found by name or VID:PID)"
    )
    flash.add_argument(
        "--firmware", metavar="F", help="an image file on the firmware server (default: the master's)"
    )
    flash.add_argument("--erase", action="store_true", help="erase the flash first (needs a merged image)")
    flash.add_argument("--no-reconnect", action="store_true", help="do not wait for the master to come back")

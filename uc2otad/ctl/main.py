"""``uc2otactl``: talk to uc2otad over D-Bus, as a technician or a provisioning script would.

Every command has ``--json``: one JSON document on stdout, errors too (``{"error": {…}}``). Exit codes
are the contract's (CONTRACT.md §5): 0 success, 1 failure, 2 nothing to do, 3 not found, 4 not
permitted, 5 daemon not reachable, 64 usage error. Secrets never travel in argv: the WiFi password
and the OTA password come from a prompt, standard input or ``--password-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Variant

from uc2otad.cli import UsageErrorParser
from uc2otad.ctl import rollback as rollback_commands
from uc2otad.ctl import update as update_commands
from uc2otad.ctl import usb as usb_commands
from uc2otad.ctl.check import check
from uc2otad.ctl.client import EXIT_OK, EXIT_USAGE, CtlError, DaemonClient
from uc2otad.ctl.interrupts import interrupts as _interrupts
from uc2otad.ctl.interrupts import until as _until
from uc2otad.ctl.output import Outcome, print_json, table
from uc2otad.ctl.password import OTA_PROMPT, read_password
from uc2otad.ctl.progress import status_line

Command = Callable[[DaemonClient, argparse.Namespace], Awaitable[Any]]


# ---- commands: each returns what --json prints, and prints the human form itself otherwise ---------


async def status(client: DaemonClient, args: argparse.Namespace) -> Any:
    if args.can_ids:
        statuses = {str(can_id): (await client.call("GetStatus", "u", can_id))[0] for can_id in args.can_ids}
    else:
        (statuses,) = await client.call("GetAllStatus")
    if not args.json:
        rows = [
            (can_id, s.get("status"), s.get("upload_status"), _percent(s.get("upload_progress")),
             s.get("firmware_version"), s.get("error_code"), s.get("message"))
            for can_id, s in sorted(statuses.items(), key=lambda item: int(item[0]))
        ]  # fmt: skip
        table(("CAN", "STATUS", "PHASE", "PROGRESS", "FIRMWARE", "ERROR", "MESSAGE"), rows)
        if not rows:
            print("no board has been updated yet")
    return statuses


async def scan(client: DaemonClient, args: argparse.Namespace) -> Any:
    (boards,) = await client.call("ScanDevices")
    if not args.json:
        rows = [
            (b["can_id"], b.get("role"), b.get("link"), b.get("reachable"), b.get("fw_version"),
             b.get("build"), b.get("update_available"))
            for b in boards
        ]  # fmt: skip
        table(("CAN", "ROLE", "LINK", "REACHABLE", "FIRMWARE", "BUILD", "UPDATE"), rows)
    return boards


async def firmware(client: DaemonClient, args: argparse.Namespace) -> Any:
    (listing,) = await client.call("ListFirmware")
    if not args.json:
        print(f"firmware server: {listing['firmware_server']}")
        entries = sorted(listing["firmware"].values(), key=lambda entry: entry["can_id"])
        rows = [(e["can_id"], e["filename"], e["size"], e.get("version"), e.get("mod_time")) for e in entries]
        table(("CAN", "IMAGE", "SIZE", "VERSION", "MODIFIED"), rows)
    return listing


async def history(client: DaemonClient, args: argparse.Namespace) -> Any:
    (jobs,) = await client.call("GetHistory", "u", args.can_id)
    if not args.json:
        rows = [
            (j.get("started"), j["can_id"], j.get("method"), j.get("state"), j.get("firmware"),
             j.get("firmware_version"), j.get("error_code"))
            for j in jobs
        ]  # fmt: skip
        table(("STARTED", "CAN", "METHOD", "RESULT", "IMAGE", "VERSION", "ERROR"), rows)
    return jobs


async def set_server(client: DaemonClient, args: argparse.Namespace) -> Any:
    await client.call("SetFirmwareServer", "s", args.url)
    server = (await client.properties())["FirmwareServer"]
    if not args.json:
        print(f"firmware server: {server}")
    return {"firmware_server": server}


async def set_wifi(client: DaemonClient, args: argparse.Namespace) -> Any:
    password = read_password(args.password_file)
    await client.call("SetWiFiCredentials", "ss", args.ssid, password)
    if not args.json:
        print(f"WiFi credentials stored for SSID {args.ssid!r}")
    return {"ssid": args.ssid, "password_set": bool(password)}


async def set_ota_password(client: DaemonClient, args: argparse.Namespace) -> Any:
    password = read_password(args.password_file, prompt=OTA_PROMPT)
    await client.call("SetOTAPassword", "s", password)
    if not args.json:
        print("OTA password stored" if password else "OTA password cleared")
    return {"password_set": bool(password)}


async def clear_cache(client: DaemonClient, args: argparse.Namespace) -> Any:
    options = {"include_known_good": Variant("b", True)} if args.include_known_good else {}
    (cleared,) = await client.call("ClearFirmwareCacheWithOptions", "a{sv}", options)
    if not args.json:
        kept, gone = cleared.get("known_good_kept", 0), cleared.get("known_good_deleted", 0)
        print(
            f"firmware cache cleared: {cleared.get('deleted', 0)} images deleted"
            + (f", and {gone} kept for rollbacks" if args.include_known_good else "")
            + (f"; {kept} kept for rollbacks (--include-known-good deletes them)" if kept else "")
        )
    return {"cleared": True, **cleared}


async def import_firmware(client: DaemonClient, args: argparse.Namespace) -> Any:
    with args.bundle.open("rb") as bundle:  # opened here, as the user: the daemon gets the open file
        (imported,) = await client.call_with_file("ImportFirmware", bundle.fileno())
    if not args.json:
        release = imported.get("version") or "(no version)"
        signed = f", signed by key {imported['signed_by']}" if "signed_by" in imported else ""
        print(f"imported release {release}{signed}: {', '.join(sorted(imported['images']))}")
        print("offered when the firmware server cannot be reached (uc2otactl firmware shows the source)")
    return imported


async def inhibit(client: DaemonClient, args: argparse.Namespace) -> Any:
    with _interrupts() as interrupted:  # before anything is printed: a Ctrl-C from then on ends it cleanly
        (cookie,) = await client.call("Inhibit", "s", args.reason)
        if not args.json:
            until = f"for {args.seconds:g} s" if args.seconds else "until Ctrl-C"
            print(f"updates inhibited {until}: {args.reason}", flush=True)
        try:
            await _until(interrupted, args.seconds)
        finally:
            with contextlib.suppress(CtlError):  # the daemon drops it anyway when we leave the bus
                await client.call("Uninhibit", "s", cookie)
    return {"inhibited": args.reason, "released": True}


async def watch(client: DaemonClient, args: argparse.Namespace) -> Any:
    def show(can_id: int, status: dict[str, Any]) -> None:
        if args.json:
            print_json({"can_id": can_id, "status": status})
        else:
            print(f"{datetime.now():%H:%M:%S} CAN {can_id}: {status_line(status)}", flush=True)

    with _interrupts() as interrupted:
        watcher = asyncio.ensure_future(client.watch(show))
        try:
            await _until(interrupted, args.seconds)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return None


# ---- helpers -----------------------------------------------------------------------------------------


def _percent(value: Any) -> str | None:
    return None if value is None else f"{value}%"


# ---- the command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # the same options before and after COMMAND; SUPPRESS keeps the subcommand's parser from resetting
    # a value given before it to the default
    common = UsageErrorParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON document")
    bus = common.add_mutually_exclusive_group()
    for flag in ("system", "session"):
        bus.add_argument(f"--{flag}", dest="bus", action="store_const", const=flag, default=argparse.SUPPRESS,
                         help=f"the {flag} bus" + (" (default)" if flag == "system" else ""))  # fmt: skip

    parser = UsageErrorParser(prog="uc2otactl", description="Control uc2otad, the openUC2 firmware updater.",
                              parents=[common])  # fmt: skip
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=UsageErrorParser
    )

    def add(name: str, handler: Command, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add("status", status, "each board's update status").add_argument(
        "can_ids", nargs="*", type=int, metavar="CAN_ID"
    )
    add("scan", scan, "boards on the bus, their firmware, whether an update is available")
    add("check", check, "each board's firmware against the server's: up to date, update available, …")
    add("firmware", firmware, "the firmware server's image for each CAN id")
    add("history", history, "past updates, newest first").add_argument(
        "can_id", nargs="?", type=int, default=0
    )
    add("set-server", set_server, "use another firmware server").add_argument("url")
    wifi = add(
        "set-wifi", set_wifi, "store the WiFi credentials for the WiFi method (password never on argv)"
    )
    wifi.add_argument("ssid")
    wifi.add_argument("--password-file", type=Path, help="read the password from this file")
    add(
        "set-ota-password",
        set_ota_password,
        "store the boards' ArduinoOTA password for the WiFi method; empty clears it (never on argv)",
    ).add_argument("--password-file", type=Path, help="read the password from this file")
    add("clear-cache", clear_cache, "delete the cached firmware images").add_argument(
        "--include-known-good",
        action="store_true",
        help="also the images kept for a rollback (each board's last two verified ones)",
    )
    add(
        "import", import_firmware, "import a release bundle (.zip or .tar.gz) for updates without a server"
    ).add_argument("bundle", type=Path, metavar="FILE")
    rollback_commands.add_arguments(
        add("rollback", rollback_commands.rollback, "put a board's earlier firmware back, showing progress")
    )
    hold = add("inhibit", inhibit, "hold off updates until Ctrl-C (or --for seconds)")
    hold.add_argument("reason")
    hold.add_argument("--for", dest="seconds", type=float, help="release after this many seconds")
    add("watch", watch, "print status changes as they happen").add_argument(
        "--for", dest="seconds", type=float, help="stop after this many seconds"
    )
    update_commands.add_arguments(
        add("update", update_commands.update, "update boards' firmware, showing progress; Ctrl-C cancels"),
        add("cancel", update_commands.cancel, "stop a board's update before it commits the new image"),
    )
    add("ports", usb_commands.ports, "serial ports, for flashing the master CAN HAT over USB")
    usb_commands.add_arguments(
        add("flash-master", usb_commands.flash_master, "flash the master CAN HAT over USB, showing progress")
    )
    return parser


async def run(args: argparse.Namespace) -> int:
    handler: Command = args.handler
    client = await DaemonClient.connect(BusType.SESSION if args.bus == "session" else BusType.SYSTEM)
    try:
        result = await handler(client, args)
    finally:
        client.close()
    exit_code = EXIT_OK
    if isinstance(result, Outcome):
        result, exit_code = result.document, result.exit_code
    if args.json and result is not None:
        print_json(result)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.bus = getattr(args, "bus", "system")
    try:
        return asyncio.run(run(args))
    except CtlError as err:
        if args.json:
            print_json(err.as_dict())
        else:
            print(f"uc2otactl: {err.message} ({err.name})", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file named on the command line (--password-file, import's) unreadable
        if args.json:
            print_json({"error": {"name": "usage", "message": str(err), "exit_code": EXIT_USAGE}})
        else:
            print(f"uc2otactl: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

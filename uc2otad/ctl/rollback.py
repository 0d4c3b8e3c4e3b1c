"""``uc2otactl rollback CAN_ID``: put a board's earlier image back (Rollback) and follow it to its end.

A slave's rollback is a job like an update's, followed through OTAStatusChanged as ``update`` follows
one (subscribed before the call; Ctrl-C cancels it while the board has not committed the image). The
master's is a USB flash, followed through USBFlashStatusChanged as ``flash-master`` follows one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from uc2otad.ctl.client import EXIT_FAILED, EXIT_OK, DaemonClient
from uc2otad.ctl.interrupts import interrupts
from uc2otad.ctl.output import Outcome
from uc2otad.ctl.progress import view_for
from uc2otad.ctl.update import UpdateRun
from uc2otad.ctl.usb import MASTER_CAN_ID, follow_flash


async def rollback(client: DaemonClient, args: argparse.Namespace) -> Outcome:
    """Rollback(CAN_ID), then the job (or the master's flash) until it ends."""
    if args.can_id == MASTER_CAN_ID:
        return await _master(client, args)
    with interrupts() as interrupted:
        run = UpdateRun(client, [args.can_id])
        try:
            await run.subscribe()
            (reply,) = await client.call("Rollback", "u", args.can_id)
            run.accepted({args.can_id: reply["job_id"]})
            if not args.json:
                print(f"CAN {args.can_id}: {_going_back(reply)} (job {reply['job_id']})", flush=True)
                run.view = view_for(sys.stdout, [args.can_id], {})
            await run.follow(interrupted)
            if interrupted.is_set():
                await run.cancel_running()
            if run.view is not None:
                run.view.close()
        finally:
            run.close()
    board = run.boards[args.can_id]
    if run.daemon_left.is_set() and not board.done:
        board.message = "uc2otad left the bus during the rollback"
    exit_code = EXIT_OK if board.outcome == "success" else EXIT_FAILED
    if not args.json:
        ended = "rolled back" if board.outcome == "success" else board.outcome
        detail = board.message or board.status.get("upload_error") or board.status.get("message", "")
        print(
            f"CAN {args.can_id}: {ended}" + (f": {detail}" if detail and board.outcome != "success" else "")
        )
    document = {**_image(reply), "can_id": args.can_id, "result": board.outcome, "exit_code": exit_code,
                "board": board.as_dict()}  # fmt: skip
    return Outcome(document, exit_code)


async def _master(client: DaemonClient, args: argparse.Namespace) -> Outcome:
    async def start() -> dict[str, Any]:
        (reply,) = await client.call("Rollback", "u", MASTER_CAN_ID)
        if not args.json:
            print(f"the master CAN HAT: {_going_back(reply)}, over USB", flush=True)
        return dict(reply)

    return await follow_flash(client, args, start)


def _going_back(reply: dict[str, Any]) -> str:
    version = reply.get("firmware_version") or str(reply["sha256"])[:12]
    return f"going back to {reply['firmware']} ({version})"


def _image(reply: dict[str, Any]) -> dict[str, Any]:
    return {key: reply[key] for key in ("firmware", "firmware_version", "sha256", "job_id") if key in reply}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("can_id", type=int, metavar="CAN_ID", help="the board (1: the master, over USB)")

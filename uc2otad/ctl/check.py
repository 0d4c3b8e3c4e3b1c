"""``uc2otactl check``: each board's firmware against the firmware server's, installing nothing.

A thin view of CheckUpdates: the daemon decides the states (one rule for the check, the scan and the
update), so a script that reads ``--json`` and a technician who reads the table see the same thing
``update --all`` acts on.
"""

from __future__ import annotations

import argparse
from typing import Any

from uc2otad.ctl.client import DaemonClient
from uc2otad.ctl.output import table

#: how each state reads in the table
_STATE_TEXT = {
    "up_to_date": "up to date",
    "update_available": "update available",
    "device_newer": "newer on the board",
    "unknown": "unknown",
    "no_firmware": "no image on the server",
    "unreachable": "unreachable",
}


async def check(client: DaemonClient, args: argparse.Namespace) -> Any:
    """Print the state of every board (the master first); ``--json``: CheckUpdates' entries."""
    (boards,) = await client.call("CheckUpdates")
    if not args.json:
        rows = [
            (b["can_id"], b.get("role"), b.get("link"), _STATE_TEXT.get(b["state"], b["state"]),
             b.get("running_version"), b.get("offered_version"), b.get("offered_image"))
            for b in boards
        ]  # fmt: skip
        table(("CAN", "ROLE", "LINK", "STATE", "RUNNING", "OFFERED", "IMAGE"), rows)
        due = sum(1 for board in boards if board["state"] == "update_available")
        print(f"{due} board{'s' if due != 1 else ''} with an update available", flush=True)
    return boards

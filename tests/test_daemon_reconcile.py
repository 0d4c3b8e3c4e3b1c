"""Issue 15, D10: after a kill while the board verified its new image, the restarted daemon asks the
board, and the job is a success after all; what the board cannot prove stays interrupted.

The daemon is a subprocess on a private bus; the virtual microscope (firmware 2026-09, which reports
its release string) runs in the test's loop on a pty. Verification waits long enough that the kill
lands in ``verifying`` while the board has already booted the new image.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from signals import StatusSignals as Progress
from test_daemon_update import FAST_UPDATE, microscope_for
from test_link_ota_stream import IMAGE, NEW_VERSION, NODE, OLD_VERSION

from uc2otad.api import names

#: the job sits in "verifying" for a minute: the kill comes first. The restarted daemon asks the board
#: with the same window and interval (FAST_UPDATE's 5 s, 0.05 s): the settle is the job's alone
LONG_SETTLE = FAST_UPDATE.replace("verify_settle = 0.05", "verify_settle = 60")


#: the notification that ends the restarted daemon's look at the boards, when none had finished
ASKED_NONE_FINISHED = "STATUS=idle; 1 interrupted job(s), 0 found finished by their boards"
#: seconds that look may take: the verify window (5 s) and the master's return
CONFIRM_TIMEOUT = 20.0


@pytest.mark.timeout(60)
async def test_a_kill_while_verifying_a_board_that_booted_the_image_is_a_success_after_restart(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path, served_image: str
) -> None:
    """D10 After a kill in verifying, the status said ``interrupted`` although the board runs the new
    image (and the next StartOTA answered "already up to date" where version.json names it). Now the
    restarted daemon sees the
    board report the job's release and says success — in the status, its signal and the history."""
    assert "verify_settle = 60" in LONG_SETTLE
    signals = Progress(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    async with await microscope_for(tmp_path) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image)
        daemon = await start_daemon(*flags, config=LONG_SETTLE)
        started = unwrap((await call(client, "StartOTA", "ua{sv}", NODE, {})).body[0])
        await signals.until("verifying")
        async with asyncio.timeout(10):
            await scope.master.slave(NODE).wait_until(lambda slave: slave.running_image == IMAGE)
        await asyncio.to_thread(daemon.kill)
        signals.statuses.clear()

        await start_daemon(*flags, config=LONG_SETTLE)
        confirmed = await signals.until("success")
        history = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (confirmed["status"], confirmed["verification"], confirmed["job_id"]) == (
        "success",
        "version",
        started["job_id"],
    )
    assert confirmed["firmware_version"] == NEW_VERSION and "error_code" not in confirmed
    (job,) = history
    assert (job["job_id"], job["state"]) == (started["job_id"], "success")
    assert job["firmware_version"] == NEW_VERSION
    assert (job["previous_version"], "error_code" in job) == (OLD_VERSION, False)
    assert NEW_VERSION in job["message"]


@pytest.mark.timeout(60)
async def test_a_kill_while_uploading_stays_interrupted_the_board_keeps_its_image(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path, served_image: str
) -> None:
    """D10 The board is asked and reports its old release: the job stays interrupted, and says so."""
    signals = Progress(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    async with await microscope_for(tmp_path, stall_at_percent=45.0, stall_seconds=2.0) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image)
        daemon = await start_daemon(*flags, config=FAST_UPDATE)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        await signals.until_uploading(30)
        await asyncio.to_thread(daemon.kill)
        restarted = await start_daemon(*flags, config=FAST_UPDATE)
        await asyncio.to_thread(restarted.wait_for_notification, ASKED_NONE_FINISHED, CONFIRM_TIMEOUT)
        status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
        running = scope.master.slave(NODE).running_image
    assert (status["status"], status["error_code"]) == ("failed", "interrupted")
    assert running != IMAGE

"""Issue 15, D9: SIGTERM mid-stream stops the daemon within the unit's budget, and the next start copes.

systemd stops the unit with SIGTERM and kills it ``TimeoutStopSec=30s`` later. A stream stopped then
used to wait for the master's last word, up to its 30 s ``rx_timeout`` and our 5 s margin, when the port
(a pty here, as a ``socket://`` HAT) cannot reset the board: longer than systemd waits. Now the daemon
leaves the master in binary mode and exits at once; the next start's recovery (issue 14, D2) waits the
master out. The daemon is a subprocess on a private bus, the virtual microscope runs in the test's loop.
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
from test_daemon_stuck_master import MasterConnected, stalling_microscope
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import NODE

from uc2otad.api import names
from uc2otad.sim.microscope import VirtualMicroscope

#: the master's rx_timeout: long enough that a daemon which waited for it would still be running when
#: the test looks (and would be killed by the test's 5 s SIGTERM budget), short enough for the restart
RX_TIMEOUT = 12.0
STOP_CONFIG = FAST_UPDATE + "[serial]\nhandshake_timeout = 0.5\nreconnect_max_delay = 0.5\n"


@pytest.mark.timeout(90)
async def test_sigterm_mid_stream_exits_at_once_and_the_next_start_recovers_the_master(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path, served_image: str
) -> None:
    """D9 SIGTERM mid-stream: exit 0 while the master still swallows bytes; the restart recovers it.

    Before, the stopping daemon stayed silent until the master's rx_timeout ended its binary mode, so
    the master was never found in it at the daemon's exit, and the exit took longer than the test's
    SIGTERM budget (the harness's SIGKILL gave -9). The job is recorded as interrupted, as after any
    stop mid-update, and the board keeps its old image.
    """
    signals = Progress(client, NODE)
    connected = MasterConnected(client)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    async with VirtualMicroscope(stalling_microscope(tmp_path, RX_TIMEOUT)) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image)
        daemon = await start_daemon(*flags, config=STOP_CONFIG)
        old_image = scope.master.slave(NODE).running_image
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        await signals.until_uploading(30)
        exit_status = await asyncio.to_thread(daemon.stop)
        master_streaming_at_exit = scope.master.in_binary_mode
        log = await asyncio.to_thread(daemon.log)

        stopped = asyncio.get_running_loop().time()
        await start_daemon(*flags, config=STOP_CONFIG)
        await connected.until_connected(since=stopped)
        reply = await call(client, "GetStatus", "u", NODE)
        running = scope.master.slave(NODE).running_image
    assert exit_status == 0, log
    assert master_streaming_at_exit, "the daemon waited for the master's rx_timeout before it exited"
    assert "left in binary mode" in log, log
    status = unwrap(reply.body[0])
    assert (status["status"], status["error_code"]) == ("failed", "interrupted")
    assert running == old_image

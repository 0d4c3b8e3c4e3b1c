"""The link against what the firmware does on the wire that a client could trip over (issue 13).

- a legacy master answers a scan twice: the int reply ``{"qid":N,"success":1}`` at once, the scan frame
  ~1.4 s later, and it forgets a scan asked for while one runs (FW-legacy ``can_controller.cpp:1549-1564,
  2757-2761`` @14fa3e3);
- ``/can_act {"restart":0}`` restarts the master without answering (FW-main ``CANopenModule.cpp:1679-1684``
  @063e5a6);
- every frame is followed by a NUL (``SerialProcess.cpp:283, 555`` @063e5a6): all of the above runs
  with it.

The virtual master plays the firmware; the reply matching is also checked on its own, since which of two
waiting commands an int reply reaches depends on timing the simulator cannot force.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from uc2otad.links.base import ConnectionEvent
from uc2otad.links.commands import INT_REPLY, restart_reply
from uc2otad.links.replies import PendingReplies
from uc2otad.links.serial_hat import LEGACY_BAUD, HatSettings, SerialHatLink
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming

TIMING = MasterTiming(sdo_time=0.0005, sdo_timeout=0.05, legacy_scan_wait=0.1, restart_delay=0.0,
                      node_boot_time=0.3, master_boot_time=0.0, master_restart_delay=0.01)  # fmt: skip
LINK = HatSettings(request_timeout=1.0, handshake_timeout=1.0, scan_timeout=1.0, read_interval=0.01)
NODES = (default_node(11), default_node(20), default_node(40))


@asynccontextmanager
async def linked(tmp_path: Path, **config: object) -> AsyncIterator[tuple[VirtualMicroscope, SerialHatLink]]:
    settings = replace(SimConfig(nodes=NODES, timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False),
                       **config)  # type: ignore[arg-type]  # fmt: skip
    async with VirtualMicroscope(settings) as scope:
        link = SerialHatLink(scope.pty.url, baud=scope.master.baud, settings=LINK)
        await link.open()
        try:
            yield scope, link
        finally:
            await link.close()


async def test_a_legacy_scan_is_the_frame_after_the_int_reply(tmp_path: Path) -> None:
    async with linked(tmp_path, profile=Profile.LEGACY) as (_scope, link):
        heard: list[dict[str, object]] = []
        link.subscribe("success", heard.append)
        result = await link.scan()
    assert heard == [{"qid": heard[0]["qid"], "success": 1}]  # the acknowledgement, with the scan's qid
    assert not result.canopen
    assert [(node.can_id, node.role, node.reachable) for node in result.nodes] == [
        (11, "motor", True),
        (20, "laser", True),
    ]  # 40 is outside the ids a legacy scan asks


async def test_scans_at_the_same_time_all_get_their_frame_from_a_legacy_master(tmp_path: Path) -> None:
    # the master forgets a scan asked for while one runs: the link's scans take turns
    async with linked(tmp_path, profile=Profile.LEGACY) as (_scope, link):
        results = await asyncio.gather(*(link.scan() for _ in range(3)))
    assert [[node.can_id for node in result.nodes] for result in results] == [[11, 20]] * 3


async def test_a_scan_s_int_reply_is_no_answer_for_a_command_waiting_by_shape() -> None:
    pending = PendingReplies()
    scan = pending.expect(qid=5, shape=None)
    wifi = pending.expect(qid=6, shape=INT_REPLY)  # legacy /can_act ota: {"qid":0|-1,...}
    assert pending.deliver({"qid": 5, "success": 1})  # the scan's acknowledgement
    assert not scan.done() and not wifi.done()
    assert pending.deliver({"qid": -1, "success": -1})
    assert pending.deliver({"scan": [], "qid": 5, "count": 0})
    assert (wifi.result(), scan.result()) == ({"qid": -1, "success": -1}, {"scan": [], "qid": 5, "count": 0})


async def test_a_legacy_restart_is_answered_by_the_int_reply_with_its_own_qid() -> None:
    pending = PendingReplies()
    scan = pending.expect(qid=5, shape=None)
    restart = pending.expect(qid=7, shape=restart_reply(11))
    assert pending.deliver({"qid": 7, "success": 1})  # act() returns the request's qid (:1610)
    assert restart.result() == {"qid": 7, "success": 1} and not scan.done()


async def test_restarting_node_0_waits_for_no_answer_and_the_master_comes_back(tmp_path: Path) -> None:
    # at 115200 the ROM's banner is readable: the link sees the reboot
    async with linked(tmp_path, baud=LEGACY_BAUD) as (_scope, link):
        rebooted = asyncio.Event()
        link.on_connection(lambda event: rebooted.set() if event is ConnectionEvent.MASTER_REBOOTED else None)
        async with asyncio.timeout(0.5):  # far less than a restart's 2 s timeout
            await link.restart_node(0)
        async with asyncio.timeout(2):
            await rebooted.wait()
        assert (await link.get_identity()).is_master
        assert [node.can_id for node in (await link.scan()).nodes] == [11, 20, 40]

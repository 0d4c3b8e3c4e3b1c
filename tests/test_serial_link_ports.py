"""Finding the HAT again by its USB identity when it comes back under another device name."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ptypeer import PtyPeer, frame, state_reply
from serial.tools.list_ports_common import ListPortInfo

from uc2otad.links.base import LinkState
from uc2otad.links.ports import PortIdentity, find_port, identify_port
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.retry import RetryPolicy

CP2102 = (0x10C4, 0xEA60)  # the CAN HAT's USB-UART bridge (uc2-stack.md §6)
FAST = HatSettings(
    handshake_timeout=1.0,
    read_interval=0.01,
    reconnect=RetryPolicy(attempts=1000, first_delay=0.01, factor=1.0, max_delay=0.01),
)


def usb_port(device: str, *, serial_number: str = "0001", vid_pid: tuple[int, int] = CP2102) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid = vid_pid
    info.serial_number = serial_number
    info.description = "CP2102 USB to UART Bridge Controller"
    return info


def test_the_same_adapter_is_found_under_a_new_name_and_no_other_is_taken() -> None:
    identity = identify_port(
        "/dev/ttyUSB0", [usb_port("/dev/ttyUSB1", serial_number="9"), usb_port("/dev/ttyUSB0")]
    )
    assert identity == PortIdentity(*CP2102, "0001", "CP2102 USB to UART Bridge Controller")
    replugged = [usb_port("/dev/ttyUSB0", serial_number="9"), usb_port("/dev/ttyUSB3")]
    assert find_port(identity, replugged) == "/dev/ttyUSB3"
    assert find_port(identity, [usb_port("/dev/ttyACM0", vid_pid=(0x303A, 0x1001))]) is None


def test_a_port_without_usb_identity_is_not_remembered() -> None:
    assert identify_port("/dev/ttyS0", [ListPortInfo("/dev/ttyS0", skip_link_detection=True)]) is None
    assert identify_port("/dev/ttyUSB0", []) is None


async def test_the_link_follows_its_adapter_to_a_new_device_name(tmp_path: Path) -> None:
    configured = tmp_path / "ttyUSB0"  # what the user configured, as the kernel first named the HAT
    first = PtyPeer()
    await asyncio.to_thread(configured.symlink_to, first.path)
    listed = [usb_port(first.path)]
    link = SerialHatLink(str(configured), settings=FAST, list_ports=lambda: list(listed))
    try:
        opening = asyncio.create_task(link.open())
        await first.write(frame(state_reply((await first.command())["qid"])))
        await opening

        listed.clear()  # unplugged: the name and the adapter are gone
        await asyncio.to_thread(configured.unlink)
        first.close()
        second = PtyPeer()  # plugged in again, under another name
        listed.append(usb_port(second.path))
        await second.write(frame(state_reply((await second.command())["qid"], identifier_version="v2")))
        await link.wait_connected(2)
        assert link.state is LinkState.OPEN
        assert link.identity is not None and link.identity.version == "v2"
        second.close()
    finally:
        await link.close()

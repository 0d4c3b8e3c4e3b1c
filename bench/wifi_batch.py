"""Benchmark a WiFi batch: six boards one at a time against three at once, at a 30 ms WiFi round trip.

Run: ``.venv/bin/python bench/wifi_batch.py [--boards 6] [--parallel 3] [--rtt 0.03] [--image-kb 850]``.
For each pace it starts a fresh virtual microscope (a legacy master, motors 10…15, its own firmware
folder with an ~850 KB image, the motor firmware's size in the procedure document), a private
dbus-daemon and uc2otad as the tests do, calls StartMultipleOTA with ``delay_between`` 0 and times it
until the daemon is idle again, every board verified. Prints a Markdown table for docs/benchmarks.md.

What is simulated: the slave's WiFi join (``wifi_join_time``), its reboot (``node_boot_time``), a
network delay on everything a board sends (``wifi_network_delay`` = the round trip, since the host's
packets leave at once), an instantly fast flash. The daemon waits ``verify_settle`` after each upload
before it looks for the board, as it does on hardware (4 s there; 1 s here).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_process import DaemonProcess
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.private_bus import PrivateBus
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

IMAGE_NAME = "esp32_seeed_xiao_esp32s3_can_slave_motor.bin"
#: the daemon's waits for a board's return, shortened from the hardware defaults (4 s, 2 s)
DAEMON_CONFIG = "[update]\nverify_settle = 1.0\nverify_interval = 0.5\n[wifi]\nota_port = {port}\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run_batch(
    workdir: Path, boards: list[int], parallel: int, rtt: float, image: bytes
) -> dict[str, Any]:
    firmware = workdir / "firmware"
    firmware.mkdir()
    (firmware / IMAGE_NAME).write_bytes(image)
    timing = MasterTiming(wifi_network_delay=rtt)
    config = SimConfig(nodes=tuple(map(default_node, boards)), profile=Profile.LEGACY, timing=timing,
                       serial_link=workdir / "ttyHAT", socket=False, ota_port=free_port(),
                       firmware_dir=firmware)  # fmt: skip
    (workdir / "bus").mkdir()
    bus = PrivateBus(workdir / "bus")
    bus.start()
    try:
        async with VirtualMicroscope(config) as scope:
            server = scope.ready_info()["firmware_server"]
            daemon = DaemonProcess(workdir, bus.address, args=("--serial-port", str(config.serial_link),
                                                               "--firmware-server", server))  # fmt: skip
            daemon.config.write_text(DAEMON_CONFIG.format(port=config.ota_port))
            await asyncio.to_thread(daemon.start)
            try:
                return await _timed_batch(bus.address, boards, parallel)
            finally:
                await asyncio.to_thread(daemon.close)
    finally:
        bus.stop()


async def _timed_batch(address: str, boards: list[int], parallel: int) -> dict[str, Any]:
    client = await MessageBus(bus_address=address).connect()
    finals: dict[int, str] = {}
    idle = asyncio.Event()

    def on_message(message: Message) -> None:
        if message.member == "OTAStatusChanged":
            status = message.body[1]
            if "upload_status" in status and status["upload_status"].value in ("success", "failed"):
                finals[message.body[0]] = status["upload_status"].value
        elif message.member == "PropertiesChanged" and message.body[1].get("Busy") == Variant("b", False):
            idle.set()

    client.add_message_handler(on_message)
    for member in ("OTAStatusChanged", "PropertiesChanged"):
        rule = f"type='signal',sender='{names.BUS_NAME}',member='{member}'"
        await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                  interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                  body=[rule]))  # fmt: skip
    options = {"ssid": Variant("s", DEFAULT_SSID), "password": Variant("s", DEFAULT_PASSWORD),
               "parallel": Variant("u", parallel), "delay_between": Variant("u", 0)}  # fmt: skip
    start = time.perf_counter()
    reply = await client.call(Message(destination=names.BUS_NAME, path=names.OBJECT_PATH,
                                      interface=names.INTERFACE, member="StartMultipleOTA",
                                      signature="aua{sv}", body=[boards, options]))  # fmt: skip
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply and reply.body
    await asyncio.wait_for(idle.wait(), 600)
    seconds = time.perf_counter() - start
    client.disconnect()
    return {"seconds": seconds, "succeeded": sum(result == "success" for result in finals.values())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--rtt", type=float, default=0.03, help="WiFi round trip, seconds")
    parser.add_argument("--image-kb", type=int, default=850)
    args = parser.parse_args()
    boards = list(range(10, 10 + args.boards))
    size = args.image_kb * 1024 // 4
    image = build_app_image("esp32s3", version="v2099.1.0", segment_sizes=(size, size, size, size))
    results = {}
    for parallel in (1, args.parallel):
        with tempfile.TemporaryDirectory() as folder:
            results[parallel] = asyncio.run(run_batch(Path(folder), boards, parallel, args.rtt, image))
    sequential, concurrent = results[1], results[args.parallel]
    print(f"| {args.boards} boards, {len(image) // 1024} KB image, {args.rtt * 1000:.0f} ms round trip "
          "| time | boards updated |")  # fmt: skip
    print("|---|---|---|")
    for parallel, result in results.items():
        print(f"| parallel={parallel} | {result['seconds']:.1f} s | {result['succeeded']}/{args.boards} |")
    ratio = concurrent["seconds"] / sequential["seconds"]
    print(f"\nparallel={args.parallel} takes {ratio:.2f} of the sequential time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

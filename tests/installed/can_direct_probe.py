"""The installed daemon's direct CAN link on python-can's ``virtual`` interface, run as the unit runs it.

check_installed.py runs this file with the interpreter of ``/usr/bin/uc2otad`` and the environment of
the installed unit and its drop-ins (``PYTHONPATH=/usr/lib/uc2otad/vendor``): canopen must come from the
package's private folder, python-can from Debian's python3-can. Then a :class:`CanDirectLink` opens a
virtual bus, a CANopen node made with the same canopen (a ``LocalNode`` on a second handle of the same
bus) sends its boot-up, the link's scan reads the node's objects by SDO, and the link closes — the
vendored canopen working on this release's python-can (4.1 on Debian 12). Prints one line of JSON.

Not collected by pytest (no ``test_`` prefix); needs the installed package.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, NoReturn

#: where the package puts canopen (debian/rules) and where Debian's python3-can is
VENDOR = "/usr/lib/uc2otad/vendor/"
SITE_PACKAGES = "/usr/lib/python3/dist-packages/"
NODE_ID = 11
VERSION = "uc2otad-check-1.0"
BUILD = "Dec  5 202604:00:00"


def fail(message: str) -> NoReturn:
    print(f"can_direct_probe: {message}", file=sys.stderr)
    sys.exit(1)


def node(canopen: Any) -> Any:
    """A CANopen node with 0x1000 and the master's scan strings (0x2500 version, 0x2508 build)."""
    od_module = canopen.objectdictionary
    dictionary = od_module.ObjectDictionary()
    for index, data_type, default in (
        (0x1000, od_module.UNSIGNED32, 0),
        (0x2500, od_module.VISIBLE_STRING, VERSION),
        (0x2508, od_module.VISIBLE_STRING, BUILD),
    ):
        variable = od_module.ODVariable(f"x{index:04X}", index, 0)
        variable.data_type = data_type
        variable.default = default
        dictionary.add_object(variable)
    return canopen.LocalNode(NODE_ID, dictionary)


async def probe() -> dict[str, object]:
    import can  # noqa: PLC0415
    import canopen  # noqa: PLC0415

    from uc2otad.links.can_direct import CanDirectLink, CanSettings  # noqa: PLC0415

    if not (canopen.__file__ or "").startswith(VENDOR):
        fail(f"canopen imported from {canopen.__file__}, not {VENDOR}")
    if not (can.__file__ or "").startswith(SITE_PACKAGES):
        fail(f"python-can imported from {can.__file__}, not {SITE_PACKAGES} (python3-can)")
    channel = f"uc2otad-check-{time.monotonic_ns()}"
    settings = CanSettings(interface="virtual", channel=channel, bitrate=500_000, discovery_wait=0.2)
    link = CanDirectLink(settings)
    started = time.monotonic()
    await link.open()
    if not link.is_open:
        fail("the link did not open")
    # the node: the vendored canopen on a second handle of the same virtual bus
    network = canopen.Network()
    network.connect(interface="virtual", channel=channel, bitrate=500_000)
    try:
        local = node(canopen)
        network.add_node(local)
        network.send_message(0x700 + NODE_ID, b"\x00")  # boot-up
        scan = await link.scan()
    finally:
        network.disconnect()
        await link.close()
    if link.is_open:
        fail("the link is still open after close()")
    found = {entry.can_id: entry for entry in scan.nodes}
    entry = found.get(NODE_ID)
    if entry is None or not entry.canopen or entry.fw_version != VERSION or entry.build != BUILD:
        fail(f"the scan found {scan.nodes}, not node {NODE_ID} with version {VERSION!r} and build {BUILD!r}")
    return {
        "python": sys.version.split()[0],
        "can": can.__version__,
        "can_file": can.__file__,
        "canopen": getattr(canopen, "__version__", "unknown"),
        "canopen_file": canopen.__file__,
        "link": link.name,
        "node": {"can_id": entry.can_id, "fw_version": entry.fw_version, "build": entry.build},
        "seconds": round(time.monotonic() - started, 3),
    }


def main() -> int:
    print(json.dumps(asyncio.run(probe())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

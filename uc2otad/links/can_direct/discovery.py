"""A scan on the bus, as FW-main's master does it (youseetoo/uc2-esp32 @063e5a6).

A node is there when it was heard — its boot-up or heartbeat (every 1 s: producer heartbeat time
0x03E8, ``lib/uc2_od/OD.c:38``), a TPDO, an SDO answer — within the last 5 s, the master's
``isNodeReachable`` (``main/src/canopen/CANopenModule.cpp:611-633``); a probe asks every id of a range
for 0x1000 at once, and who answers is heard. Then each node's SDO reads as the master's scan does them,
one by one (``readNodeString``, ``CANopenModule.cpp:1492-1503, 1605-1610``): build 0x2508, version
0x2500, MAC 0x2509, here after 0x1000 (the one object CiA 301 makes mandatory: "does it speak
CANopen") and with 0x2501 (image name) where the node has it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable

from uc2otad.links.can_direct.objects import (
    BUILD_TIME,
    DEVICE_TYPE,
    FIRMWARE_VERSION,
    IMAGE_NAME,
    MAC_ADDRESS,
    SDO_REQUEST_BASE,
    UPLOAD_INITIATE,
    role_for,
)
from uc2otad.links.can_direct.sdo import SdoChannel, SdoFailedError
from uc2otad.links.commands import NodeInfo

_LOGGER = logging.getLogger(__name__)
#: an SDO upload initiate request for 0x1000, sub-index 0
_PROBE = bytes([UPLOAD_INITIATE]) + struct.pack("<HB", DEVICE_TYPE, 0) + bytes(4)


def probe_frames(node_ids: Iterable[int]) -> list[tuple[int, bytes]]:
    """The frames (COB-ID, data) that ask every id of ``node_ids`` for 0x1000 at once."""
    return [(SDO_REQUEST_BASE + node_id, _PROBE) for node_id in node_ids]


async def read_node(sdo: SdoChannel, node_id: int, *, heard: bool, timeout: float) -> NodeInfo:  # noqa: ASYNC109
    """What a scan says about node ``node_id``: unreachable unless ``heard``; else its objects, each
    None where it does not answer (``timeout`` per answer).

    :raises LinkLostError: the bus or the interface was lost meanwhile
    """
    role, device_type = role_for(node_id)
    if not heard:
        return NodeInfo(node_id, device_type, role, reachable=False, status="unreachable")
    texts: dict[int, str | None] = {}
    speaks_canopen = False
    try:
        await sdo.run(node_id, timeout, lambda client: client.upload(DEVICE_TYPE, 0))
    except SdoFailedError as failure:
        _LOGGER.info("node %d heard but no CANopen answer: %s", node_id, failure)
    else:
        speaks_canopen = True
        for index in (BUILD_TIME, FIRMWARE_VERSION, MAC_ADDRESS, IMAGE_NAME):
            texts[index] = await sdo.read_text(node_id, index, timeout)
    return NodeInfo(
        can_id=node_id,
        device_type=device_type,
        role=role,
        reachable=True,
        status="idle",
        build=texts.get(BUILD_TIME),
        fw_version=texts.get(FIRMWARE_VERSION),
        fw_image=texts.get(IMAGE_NAME),
        mac=texts.get(MAC_ADDRESS),
        answered=any(texts.get(index) for index in (BUILD_TIME, FIRMWARE_VERSION, MAC_ADDRESS)),
        canopen=speaks_canopen,
    )

"""What the direct link addresses on the bus: COB-IDs, the nodes' objects, their OTA codes, their roles.

The numbers are FW-main's (youseetoo/uc2-esp32 @063e5a6): the object indices of ``UC2_OD_Indices.h:190-198``
and ``CANopenModule.cpp:1248-1254``, the OTA status and error codes of ``CanOpenOTA.h:21-40``, the roles
by address of ``uc2-stack.md`` §3.2 with the master's ``deviceType`` numbers; the COB-IDs are CiA 301's
predefined connection set. Pure data: no bus, no link.
"""

from __future__ import annotations

# ---- COB-IDs (CiA 301 predefined connection set) ---------------------------------------------------------

#: the data of a boot-up message (0x700 + id)
BOOT_UP = b"\x00"
HEARTBEAT_BASE = 0x700
SDO_RESPONSE_BASE = 0x580
SDO_REQUEST_BASE = 0x600
TPDO1_BASE = 0x180
#: COB-ID bases whose frames prove a node is there (the master's proof of life, ``uc2-stack.md`` §3.1)
PROOF_OF_LIFE = (TPDO1_BASE, SDO_RESPONSE_BASE, HEARTBEAT_BASE)
#: an SDO upload initiate request (client command specifier 2), as a probe sends it
UPLOAD_INITIATE = 0x40
#: data bytes per segment of a block download (CiA 301)
SEGMENT_BYTES = 7

# ---- the objects (UC2_OD_Indices.h:190-198, CANopenModule.cpp:1248-1254 @063e5a6) ---------------------

DEVICE_TYPE = 0x1000
FIRMWARE_VERSION = 0x2500
IMAGE_NAME = 0x2501
REBOOT = 0x2507
BUILD_TIME = 0x2508
MAC_ADDRESS = 0x2509
OTA_DATA = 0x2F00
OTA_SIZE = 0x2F01
OTA_CRC = 0x2F02
OTA_STATUS = 0x2F03
OTA_RECEIVED = 0x2F04
OTA_ERROR = 0x2F05
#: 0x2F03 (``CanOpenOTA.h:21-28``)
OTA_STATUS_NAMES = {0x00: "idle", 0x01: "receiving", 0x02: "verifying", 0x03: "complete", 0xFF: "error"}
OTA_COMPLETE = 0x03
OTA_STATUS_ERROR = 0xFF
#: 0x2F05 (``CanOpenOTA.h:30-40``)
OTA_ERROR_NAMES = {
    0x00: "none",
    0x01: "no_partition",
    0x02: "begin_failed",
    0x03: "write_failed",
    0x04: "crc_mismatch",
    0x05: "commit_failed",
    0x06: "size_zero",
    0x07: "size_too_large",
}

# ---- roles ------------------------------------------------------------------------------------------------

#: roles by address (``uc2-stack.md`` §3.2) and the master's ``deviceType`` numbers for them
#: (``RoutingTable.h:16``, ``CANopenModule.cpp:1563, 1571, 1590`` @063e5a6); a direct link has no
#: routing table, so the address is all it goes by
_ROLES: tuple[tuple[range, str, int], ...] = (
    (range(10, 20), "motor", 1),
    (range(20, 25), "laser", 2),
    (range(30, 32), "led", 3),
    (range(40, 50), "galvo", 4),
    (range(60, 61), "gpio", 9),
    (range(61, 62), "ptz", 100),
)
#: what a node outside those ranges is called, as the master's probed nodes (``deviceType`` -1)
UNROUTED = ("unrouted", -1)


def role_for(can_id: int) -> tuple[str, int]:
    """The role and the master's ``deviceType`` the address gives ``can_id``."""
    return next(((role, number) for ids, role, number in _ROLES if can_id in ids), UNROUTED)

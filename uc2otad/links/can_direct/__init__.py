"""A direct CAN link: the daemon on the CAN bus itself, a CANopen SDO client, no master in the path.

The same updates as through the master CAN HAT (``uc2-stack.md`` §2.2, §3.1), but the daemon speaks
CANopen itself: python-can opens the bus by interface name (``socketcan``/``can0`` on a Pi with an
MCP2515 HAT or a USB adapter; ``virtual`` in tests), the ``canopen`` package is the SDO client. What it
does is what FW-main's master does on the bus, read from its source (youseetoo/uc2-esp32 @063e5a6):

- discovery: a node is there when it was heard — its boot-up (0x700 + id, data 0x00) or its heartbeat
  (every 1 s: producer heartbeat time 0x03E8, ``lib/uc2_od/OD.c:38``) — within the last 5 s, the
  master's ``isNodeReachable`` (``main/src/canopen/CANopenModule.cpp:611-633``); then each node's
  SDO reads as the master's scan does them, one by one (``readNodeString``, ``CANopenModule.cpp:1492-1503,
  1605-1610``): build 0x2508, version 0x2500, MAC 0x2509, here after 0x1000 (the one object CiA 301
  makes mandatory: "does it speak CANopen") and with 0x2501 (image name) where the node has it;
- restart: 1 written (U8) to 0x2507 with a 1 s timeout (``CANopenModule.cpp:1691-1695``), "SDO write
  failed" when it does not go through, as the master's reply says;
- an image (``OtaBinaryReceive.cpp:70-118, 263-274``): the node must have been heard within 10 s
  (``:155``, ``slave_unreachable``); CRC-32 into 0x2F02 (``:78``, ``crc_write_failed``), size into
  0x2F01 (``:88``, ``size_write_failed``) — the slave runs ``esp_ota_begin`` inside the write and so
  answers only after erasing the partition (``CanOpenOTA.cpp:202-215``), hence
  :attr:`CanSettings.size_write_timeout` (20 s) instead of canopen's 0.3 s or FW-main's 250 ms
  (``CANopenModule.h:39-45``); a 500 ms settle (``OtaBinaryReceive.cpp:93-96``); the SDO **block**
  download of the image into 0x2F00 with a 15 s timeout (``CANopenModule.cpp:814-816, 854-859``,
  ``sdo_begin_failed``, ``sdo_chunk_failed``); the end of the transfer, in which the slave checks the
  CRC, commits the image and sets the boot partition before it answers (``CanOpenOTA.cpp:296-357``,
  ``sdo_end_failed``); it reboots 2 s later (``:344-354``) with a boot-up message, the evidence
  :meth:`CanDirectLink.wait_for_boot` waits for;
- after a failure, the slave's own status 0x2F03 and error code 0x2F05 (``CanOpenOTA.h:21-40``;
  ``setError`` keeps them readable, ``CanOpenOTA.cpp:150-154``) are read back as FW-main's PC tool
  does (``tools/canopen/uc2_ota_can.py:143-162``) and go into the error's details; after success
  0x2F03 is read once more while the node has not rebooted yet (3, complete; only 0xFF refutes it).

Errors carry the master's codes (``MASTER_ERROR_TEXT`` of :mod:`~uc2otad.links.ota_stream`), so a job's
``error_code`` and ``upload_error`` read the same on either path; an SDO timeout is a
:class:`~uc2otad.errors.NodeTimeoutError` (a ``MasterError`` and a ``TimeoutError``). Bus-off and
error-passive — python-can error frames as SocketCAN delivers them (``linux/can/error.h``), or the
bus's own state where the interface reports one — end what runs with
:class:`~uc2otad.errors.LinkLostError` (``link_lost``) naming the reason, and refuse commands until the
controller reports error-active again or the link is reopened.

Where the sources disagree, the code the master runs wins: the comments ``CanOpenOTA.cpp:10-12``,
``CanOpenOTA.h:10`` and ``CanOpenOTAStreaming.h:28-31`` say size first, then CRC, but the master writes
the CRC first (``OtaBinaryReceive.cpp:77-92``), as ``uc2-stack.md`` §3.1 says; §3.1's "read 0x2F03"
after the transfer is the PC tool's step (and ``CanOpenOTAStreaming.h:31``), the master itself reads
nothing back and trusts the end of the block download (``OtaBinaryReceive.cpp:265-274``); and FW-main's
master writes the size with the 250 ms default (``OtaBinaryReceive.cpp:88``, ``CANopenModule.h:59-61``)
though its own comment asks for more for an erasing handler (``CANopenModule.h:39-42``) — the 20 s here
is the 2026-09 master's, which §3.1 knows from documentation only.

Main constraint: canopen's calls block (a response queue with a timeout), so each runs in a worker
thread (:func:`~uc2otad.aio.run_stoppable`), one SDO transfer at a time like the firmware's single SDO
client; a reader thread of the link's own reads the bus and hands what matters to the loop.

The package, one job per module:

- ``settings``: :class:`CanSettings` and the firmware's defaults;
- ``objects``: COB-IDs, object indices, the slave's OTA status and error codes, roles by address;
- ``bus_state``: SocketCAN error frames as the controller's state (:func:`decode_error_frame`), and
  why the bus is lost (``ControllerState``);
- ``reader``: the thread that reads the bus and reports the interface's failure once;
- ``discovery``: a scan's probe frames and each node's SDO reads;
- ``hearing``: what was heard, per node — proof of life, boot-ups, another SDO client's requests;
- ``sdo``: canopen's SDO client, one transfer at a time in worker threads, its failures as errors;
- ``stream``: one image into one node (the master's sequence above);
- ``link``: :class:`CanDirectLink`, the link's life and state and its commands.

Bus etiquette: the link hears every frame on the bus but its own, so an SDO request to a node
(0x600 + id) that it hears is another client's — the master CAN HAT, a PC tool. While one was heard
within :attr:`CanSettings.foreign_sdo_quiet`, :meth:`CanDirectLink.stream_ota` refuses with
:class:`~uc2otad.errors.LinkBusyError` before sending anything: the node has one SDO server
(``lib/uc2_od/OD.h:23``), and two clients' transfers on the same COB-IDs would corrupt each other.

An interface that fails — python-can-remote's server going away (``WebsocketClosed``,
``BrokenPipeError``, ``ConnectionResetError``), ``can0`` going down — ends what runs with
:class:`~uc2otad.errors.LinkLostError` ("the CAN interface failed: …") and refuses commands until the
link is reopened; :meth:`CanDirectLink.close` never raises.
"""

from __future__ import annotations

from uc2otad.links.can_direct.bus_state import (
    CAN_ERR_BUSOFF,
    CAN_ERR_CNT,
    CAN_ERR_CRTL,
    CAN_ERR_CRTL_ACTIVE,
    CAN_ERR_CRTL_RX_PASSIVE,
    CAN_ERR_CRTL_RX_WARNING,
    CAN_ERR_CRTL_TX_PASSIVE,
    CAN_ERR_CRTL_TX_WARNING,
    CAN_ERR_RESTARTED,
    BusError,
    decode_error_frame,
)
from uc2otad.links.can_direct.link import CanDirectLink
from uc2otad.links.can_direct.objects import (
    BOOT_UP,
    BUILD_TIME,
    DEVICE_TYPE,
    FIRMWARE_VERSION,
    IMAGE_NAME,
    MAC_ADDRESS,
    OTA_COMPLETE,
    OTA_CRC,
    OTA_DATA,
    OTA_ERROR,
    OTA_ERROR_NAMES,
    OTA_RECEIVED,
    OTA_SIZE,
    OTA_STATUS,
    OTA_STATUS_ERROR,
    OTA_STATUS_NAMES,
    REBOOT,
    SEGMENT_BYTES,
    UNROUTED,
    role_for,
)
from uc2otad.links.can_direct.settings import (
    BLOCK_TIMEOUT,
    DEFAULT_BITRATE,
    DEFAULT_CHANNEL,
    DEFAULT_INTERFACE,
    DISCOVERY_WAIT,
    FOREIGN_SDO_QUIET,
    NODE_LIVENESS,
    NOTIFIER_TIMEOUT,
    OTA_SETTLE,
    REACHABLE_TIMEOUT,
    RESTART_TIMEOUT,
    SDO_TIMEOUT,
    SIZE_WRITE_TIMEOUT,
    CanSettings,
)

__all__ = [
    "BLOCK_TIMEOUT",
    "BOOT_UP",
    "BUILD_TIME",
    "CAN_ERR_BUSOFF",
    "CAN_ERR_CNT",
    "CAN_ERR_CRTL",
    "CAN_ERR_CRTL_ACTIVE",
    "CAN_ERR_CRTL_RX_PASSIVE",
    "CAN_ERR_CRTL_RX_WARNING",
    "CAN_ERR_CRTL_TX_PASSIVE",
    "CAN_ERR_CRTL_TX_WARNING",
    "CAN_ERR_RESTARTED",
    "DEFAULT_BITRATE",
    "DEFAULT_CHANNEL",
    "DEFAULT_INTERFACE",
    "DEVICE_TYPE",
    "DISCOVERY_WAIT",
    "FIRMWARE_VERSION",
    "FOREIGN_SDO_QUIET",
    "IMAGE_NAME",
    "MAC_ADDRESS",
    "NODE_LIVENESS",
    "NOTIFIER_TIMEOUT",
    "OTA_COMPLETE",
    "OTA_CRC",
    "OTA_DATA",
    "OTA_ERROR",
    "OTA_ERROR_NAMES",
    "OTA_RECEIVED",
    "OTA_SETTLE",
    "OTA_SIZE",
    "OTA_STATUS",
    "OTA_STATUS_ERROR",
    "OTA_STATUS_NAMES",
    "REACHABLE_TIMEOUT",
    "REBOOT",
    "RESTART_TIMEOUT",
    "SDO_TIMEOUT",
    "SEGMENT_BYTES",
    "SIZE_WRITE_TIMEOUT",
    "UNROUTED",
    "BusError",
    "CanDirectLink",
    "CanSettings",
    "decode_error_frame",
    "role_for",
]

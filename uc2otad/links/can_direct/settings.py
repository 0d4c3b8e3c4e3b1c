"""The ``[can]`` settings of the direct CAN link: which bus, and every timeout of the exchange.

Each default is the firmware's value (youseetoo/uc2-esp32 @063e5a6), cited where it is defined, so that
the daemon on the bus waits as long as FW-main's master would; tests shrink them instead of sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

from uc2otad.errors import ConfigError

DEFAULT_INTERFACE = "socketcan"
DEFAULT_CHANNEL = "can0"
#: the UC2 bus: 500 kbit/s (``TWAI_TIMING_CONFIG_500KBITS()``, ``uc2-stack.md`` §3.1)
DEFAULT_BITRATE = 500_000
#: an SDO answer: the master's default 250 ms (``CANopenModule.h:39-45`` @063e5a6)
SDO_TIMEOUT = 0.25
#: the size write: the slave erases the partition before it answers (``CanOpenOTA.cpp:202-215``);
#: 20 s, the 2026-09 master's ``SIZE_WRITE_TIMEOUT_MS`` (``uc2-stack.md`` §3.1 via the simulator's profiles)
SIZE_WRITE_TIMEOUT = 20.0
#: the reboot write to 0x2507: ``writeSDO_u8(…, 0x2507, 0, 1, 1000)`` (``CANopenModule.cpp:1691-1692``)
RESTART_TIMEOUT = 1.0
#: every answer of the block download: ``SDO_STREAM_TIMEOUT_MS`` (``CANopenModule.cpp:814-816``)
BLOCK_TIMEOUT = 15.0
#: the pause after the size write (``OtaBinaryReceive.cpp:93-96``): "for the CAN stack to recover"
OTA_SETTLE = 0.5
#: how long a stream waits for a node it has not heard: ``waitForNodeReachable(nodeId, 10000)``
#: (``OtaBinaryReceive.cpp:155``)
REACHABLE_TIMEOUT = 10.0
#: heard within this long counts as there (``isNodeReachable``, ``CANopenModule.cpp:611-633``)
NODE_LIVENESS = 5.0
#: a scan listens at least this long after the link opened: one heartbeat period (1 s, ``OD.c:38``)
#: and a margin
DISCOVERY_WAIT = 1.5
#: another SDO client (the master CAN HAT, a PC tool) heard talking to a node within this long keeps the
#: link from streaming to it: the node has one SDO server (``OD_CNT_SDO_SRV 1``, ``lib/uc2_od/OD.h:23``),
#: to which the requests of two clients on the same 0x600 + id COB-ID are indistinguishable, and
#: the master sends nothing between the chunks of its 4 KB cycle longer than its 250 ms SDO timeout
#: (``CANopenModule.h:39-45``) except the 500 ms settle after the size write (``OtaBinaryReceive.cpp:93-96``);
#: 2 s covers both with a margin
FOREIGN_SDO_QUIET = 2.0
#: seconds the reader thread blocks per read: bounds how long closing waits for it, and an idle bus
#: wakes it twice a second (a UC2 bus carries every node's heartbeat each second anyway)
NOTIFIER_TIMEOUT = 0.5
#: seconds closing waits for the interface to shut down (python-can-remote waits for its server's answer)
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class CanSettings:
    """The ``[can]`` section: which bus, and every timeout of the exchange (the defaults: the firmware's)."""

    #: any python-can interface by name: ``socketcan``, ``pcan``, ``gs_usb``, ``slcan``, ``virtual``…
    interface: str = DEFAULT_INTERFACE
    channel: str = DEFAULT_CHANNEL
    bitrate: int = DEFAULT_BITRATE
    sdo_timeout: float = SDO_TIMEOUT
    size_write_timeout: float = SIZE_WRITE_TIMEOUT
    restart_timeout: float = RESTART_TIMEOUT
    block_timeout: float = BLOCK_TIMEOUT
    ota_settle: float = OTA_SETTLE
    reachable_timeout: float = REACHABLE_TIMEOUT
    node_liveness: float = NODE_LIVENESS
    discovery_wait: float = DISCOVERY_WAIT
    foreign_sdo_quiet: float = FOREIGN_SDO_QUIET

    def __post_init__(self) -> None:
        if not self.interface:
            raise ConfigError("can.interface", "must name a python-can interface")
        if self.bitrate <= 0:
            raise ConfigError("can.bitrate", f"must be positive, not {self.bitrate}")
        for key in ("sdo_timeout", "size_write_timeout", "restart_timeout", "block_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"can.{key}", f"must be positive, not {getattr(self, key)}")
        for key in (
            "ota_settle",
            "reachable_timeout",
            "node_liveness",
            "discovery_wait",
            "foreign_sdo_quiet",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"can.{key}", f"must not be negative, not {getattr(self, key)}")

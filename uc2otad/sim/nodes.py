"""The boards on the virtual CAN bus: who they are and what a scan learns about them.

Roles follow the firmware's node addressing (``uc2-stack.md`` §3.2): motors 10-19, lasers 20-24,
LEDs 30-31, galvos 40-49, GPIO slave 60, PTZ bridge 61. What a node reports in a scan follows the
firmware generation it runs (:mod:`uc2otad.sim.profiles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from uc2otad.errors import ConfigError
from uc2otad.sim.profiles import Profile

#: the virtual microscope of ``uc2otad-sim`` without options: four motors, a laser, an LED, a galvo
DEFAULT_NODE_IDS = (10, 11, 12, 13, 20, 30, 40)
DEFAULT_VERSION = "v2026.1.0"
#: compile time in the firmware's ``__DATE__ " " __TIME__`` form
DEFAULT_BUILD = "Oct  1 2026 09:26:22"

_ROLE_RANGES: tuple[tuple[range, str], ...] = (
    (range(10, 20), "motor"),
    (range(20, 25), "laser"),
    (range(30, 32), "led"),
    (range(40, 50), "galvo"),
    (range(60, 61), "gpio"),
    (range(61, 62), "ptz"),
)
#: ``deviceType`` numbers of a CANopen scan: the routing table's ``enum Type : uint8_t { MOTOR = 1,
#: LASER, LED, GALVO, HOME, TMC, DAC, AIN, DIN }`` (``RoutingTable.h:16`` @063e5a6), the GPIO slave
#: listed as DIN (``CANopenModule.cpp:1563, 1590``) and the PTZ bridge as 100 (``:1571``). FW-legacy
#: numbers by id range instead (``LEGACY_SCAN_TYPES`` in :mod:`.master`); clients go by ``deviceTypeStr``
DEVICE_TYPES = {"motor": 1, "laser": 2, "led": 3, "galvo": 4, "gpio": 9, "ptz": 100}
#: ``deviceType`` of a probed node outside the master's routing table
UNROUTED = -1


def role_for(can_id: int) -> str:
    """The role the firmware's addressing gives ``can_id``.

    :raises ConfigError: no role has that id
    """
    for ids, role in _ROLE_RANGES:
        if can_id in ids:
            return role
    raise ConfigError("nodes", f"CAN id {can_id} has no role (motors 10-19, lasers 20-24, LEDs 30-31, "
                      "galvos 40-49, GPIO 60, PTZ 61)")  # fmt: skip


#: the receive error count a disturbed bus shows (``twai_get_status_info``'s ``rx_error_counter``): 128,
#: where ISO 11898-1 makes a controller error-passive; TWAI reports it still "running"
DISTURBED_RX_ERRORS = 128


@dataclass(frozen=True)
class NodeFaults:
    """Switchable misbehaviour of one slave; the default is a healthy board."""

    #: joining WiFi fails whatever the credentials (out of range): the ``ota`` event has status 1
    wifi_refused: bool = False
    #: ArduinoOTA does not start after joining: status 2
    ota_start_fails: bool = False
    #: the new image fails its first boot and the bootloader rolls back to the old one (ESP-IDF's app
    #: rollback, ``CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE``): the transfer ended well, the board runs
    #: what it ran before
    boots_old_image: bool = False
    #: the slave resets (a brown-out) once this share of an image has arrived, and boots its old image
    drop_at_percent: float | None = None
    #: the slave stops answering once this share of an image has arrived, for ``stall_seconds``
    stall_at_percent: float | None = None
    stall_seconds: float = math.inf
    #: the flash write of this image offset goes wrong: the slave's CRC check refuses the image
    corrupt_offset: int | None = None
    #: the transfer faults above strike one transfer only, then clear (a flaky moment: the retry
    #: succeeds). A CAN stream clears a drop or stall this way; a WiFi upload any of the three
    transfer_faults_once: bool = False
    #: the sha256 (hex) of an image that disturbs the bus once this node runs it (a build with another
    #: bit timing, a task that floods the bus): the master's TWAI controller counts
    #: :data:`DISTURBED_RX_ERRORS` receive errors while it runs. What the check after an update
    #: (issue 20, ``update.rollback_on_unhealthy``) is for: the update itself went well
    disturbing_image: str = ""

    def without_transfer_faults(self) -> NodeFaults:
        """These faults with the transfer faults cleared."""
        return replace(self, drop_at_percent=None, stall_at_percent=None, corrupt_offset=None)


@dataclass(frozen=True)
class NodeSpec:
    """One slave board of the virtual microscope."""

    can_id: int
    role: str
    version: str = DEFAULT_VERSION
    build: str = DEFAULT_BUILD
    mac: str = ""
    #: the firmware generation it runs until it boots another image; None: the microscope's default
    profile: Profile | None = None
    #: the image name the node reports (``fwImage``, newer firmware); "" for none
    image: str = ""
    #: in the master's routing table; an unrouted node is found only by a probing scan
    routed: bool = True
    #: on the bus when the simulation starts
    online: bool = True
    faults: NodeFaults = field(default_factory=NodeFaults)
    #: the password its ArduinoOTA asks for (legacy WiFi method); None: it asks for none. The openUC2
    #: firmware sets none (youseetoo/uc2-esp32 @14fa3e3 ``main/src/can/can_controller.cpp:2395-2463``
    #: configures ArduinoOTA with hostname and mDNS only), so a protected board is a lab's own build that
    #: adds ``ArduinoOTA.setPassword(...)`` (espressif/arduino-esp32
    #: ``libraries/ArduinoOTA/src/ArduinoOTA.cpp``; the challenge is :mod:`uc2otad.sim.ota_auth`'s)
    ota_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 2 <= self.can_id <= 127:
            raise ConfigError("nodes", f"CAN id must be 2..127 (1 is the master), not {self.can_id}")
        if self.role not in DEVICE_TYPES:
            raise ConfigError("nodes", f"node {self.can_id}: unknown role {self.role!r}")

    @property
    def ip(self) -> str:
        """The loopback address its ArduinoOTA server will use: ``127.0.0.1xx`` for node xx."""
        return f"127.0.0.{100 + self.can_id}"

    @property
    def device_type(self) -> int:
        return DEVICE_TYPES[self.role]


def default_node(can_id: int) -> NodeSpec:
    """Node ``can_id`` with its role by address, the default version and a MAC derived from the id.

    :raises ConfigError: the id has no role
    """
    return NodeSpec(can_id=can_id, role=role_for(can_id), mac=mac_for(can_id))


def mac_for(can_id: int) -> str:
    """A locally administered MAC that names the node: ``02:55:43:32:00:0B`` for node 11."""
    return f"02:55:43:32:00:{can_id:02X}"

"""Every delay of the virtual microscope's bus, master and slaves, in one table.

One table because one config section sets them (``[timing]`` in the ``uc2otad-sim`` file) and because
the delays interlock: the master's size-write timeout only means something next to the slave's erase
time, its rx timeout next to the host's pace. Each default is the firmware's number where the spec
gives one (with the source) and a stated estimate where it does not. Tests shrink them instead of
sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MasterTiming:
    """Every delay of the virtual bus, in seconds; tests shrink them."""

    # ---- the master and its bus ---------------------------------------------------------------------
    #: a slave answers an SDO request this long after it arrived: CANopenNode runs its SDO server in the
    #: 1 ms CANopen task (the frames' own time on the wire comes from the CAN-rate model)
    sdo_time: float = 0.001
    #: the master gives up an SDO read after 100 ms (FW-main ``_read_SDO``): an unreachable node in a scan
    sdo_timeout: float = 0.1
    #: a legacy master's scan frame follows its int reply after ``SCAN_REQUEST`` to 18 ids 50 ms apart
    #: and a 500 ms wait for the answers: 18 x 50 ms + 500 ms (``can_controller.cpp:2556-2612`` @14fa3e3)
    legacy_scan_wait: float = 1.4
    #: a slave restarts ~200 ms after the SDO write to 0x2507 (§2.4)
    restart_delay: float = 0.2
    #: a restarted slave is back on the bus after its boot (ESP32-S3 ROM and app start; an estimate)
    node_boot_time: float = 1.0
    #: the master runs its app again this long after a reset (ROM, bootloader, setup; an estimate)
    master_boot_time: float = 0.8
    #: ``/can_act {"restart":0}``: the master waits 300 ms, then restarts without answering
    #: (``CANopenModule.cpp:1682-1683`` @063e5a6)
    master_restart_delay: float = 0.3
    #: a CANopen slave's heartbeat period: producer heartbeat time 1000 ms (``lib/uc2_od/OD.c:38``
    #: @063e5a6)
    heartbeat_interval: float = 1.0
    #: the master counts a node reachable when it heard it within the last 5 s
    #: (``CANopenModule::isNodeReachable``, ``CANopenModule.cpp:611-633`` @063e5a6): a scan during a
    #: short reboot still lists the node with status 0, only its SDO reads fail
    node_liveness: float = 5.0

    # ---- streaming through the master (OtaBinaryReceive, uc2-stack.md §2.2, §3.1) ----------------------
    #: ``waitForNodeReachable(nodeId, 10000)`` before "ready"
    reachable_timeout: float = 10.0
    #: the master's default SDO timeout, 250 ms (``CANopenModule.h:61`` @063e5a6): the CRC write
    sdo_write_timeout: float = 0.25
    #: how long the master waits for the size write (the slave may erase before it answers); None: the
    #: master's firmware profile says (250 ms on FW-main, 20 s since 2026-09-30; :mod:`.profiles`)
    size_write_timeout: float | None = None
    #: the master's pause after the size write, before the block download (500 ms in FW-main)
    ota_settle: float = 0.5
    #: SDO timeout of the block download (``CO_SDOclientDownloadInitiate(…, 15 s, blockEnable)``)
    block_timeout: float = 15.0
    #: the master abandons a stream when the host has been silent this long (``rx_timeout``)
    ota_rx_timeout: float = 30.0

    # ---- the slaves ---------------------------------------------------------------------------------
    #: a slave's SDO server aborts a transfer after this long without a frame; 0.7 of it is CANopenNode's
    #: sub-block timeout (``CO_SDOserver.c:338``, :mod:`.sdo_block`). FW-main passes 5000 ms
    #: (``SDO_SRV_TIMEOUT_TIME``, ``CANopenModule.cpp:94-99, 1342-1345`` @063e5a6; uc2-stack.md §2.4):
    #: 1 s here is the library example's (``lib/ESP32_CanOpenNode/examples/ESP32_CANOpenNode/
    #: ESP32_CANOpenNode.ino:87``), kept because the simulator's tests count on a failed transfer being
    #: cleared within 1 s — set 5.0 for the firmware's number
    sdo_server_timeout: float = 1.0
    #: the size write with ``OTA_WITH_SEQUENTIAL_WRITES``: ``esp_ota_begin`` erases nothing up front
    #: (an estimate for the partition lookup)
    size_write_time: float = 0.01
    #: FW-main's ``esp_ota_begin`` erasing before it answers the size write: "blocks … for 200-500ms"
    #: (``CanOpenOTA.cpp:202-208`` @063e5a6), the upper bound, which outlasts the master's 250 ms. Only
    #: the first size write after a boot pays it: the sectors are blank when the host retries, and a
    #: retry "usually succeeds" (FIRMWARE_VERSIONING.md @33e3850) — why is our assumption (a NOR flash
    #: erases a blank sector faster)
    partition_erase_time: float = 0.5
    #: the end of the image's block download: before it answers, the slave reads the image back for its
    #: CRC-32, ``esp_ota_end`` checks it again and ``esp_ota_set_boot_partition`` rewrites otadata (a
    #: 4 KB sector erase, ~45 ms typical) — an estimate. It is what separates the master's "flashing"
    #: from its "success": UC2-REST 0.2.0.43 drops a "success" that arrives in one read with the last
    #: ``ota_rx`` (``CANOTA._drain_acks``) and then waits 600 s for it
    ota_commit_time: float = 0.1
    #: a slave reboots this long after it committed an image: the deferred restart that lets the SDO
    #: end response go out (§2.2 step 5)
    ota_reboot_delay: float = 2.0
    #: a slave resets a half-finished OTA once more than 30 s passed since its last activity
    #: (``OTA_INACTIVITY_TIMEOUT_MS``, ``CanOpenOTA.cpp:58, 110`` @063e5a6): the end of the size write,
    #: taken after ``esp_ota_begin`` erased (``:223-225``), or the last flash write of image data
    #: (``:270-273``); SDO frames that write nothing (status reads, the CRC) do not count (§3.1)
    ota_idle_reset: float = 30.0
    #: the slave's OTA watchdog task looks every 2 s (``vTaskDelay(pdMS_TO_TICKS(2000))``,
    #: ``CanOpenOTA.cpp:102-119`` @063e5a6), counted from its boot: the reset comes at the first look
    #: after ``ota_idle_reset`` ran out, up to one period late. 0: it looks all the time
    ota_watchdog_period: float = 2.0

    # ---- the WiFi method (legacy firmware, §2.3) -------------------------------------------------------
    #: joining the virtual WiFi with the right credentials, DHCP included (an estimate)
    wifi_join_time: float = 2.0
    #: a slave tries WiFi for up to 30 s before it reports failure (FW-legacy ``handleOtaCommand``)
    wifi_join_timeout: float = 30.0
    #: FW-legacy raises a requested OTA window below 300000 ms to 300000 ms; the slave reboots at its end
    wifi_ota_min_window: float = 300.0
    #: FW-legacy sends its success ack before it starts mDNS and ArduinoOTA (``can_controller.cpp:2377``
    #: vs ``:2451`` @14fa3e3): ArduinoOTA listens this long after the ack, and an invitation sent
    #: meanwhile is lost. What runs between is ``MDNS.begin`` and a log line at the slave's 115200 baud
    #: (``:2382-2397``); 50 ms is an estimate
    ota_listen_delay: float = 0.05
    #: seconds until what a slave sends over WiFi reaches the host (its answers and acks): half of a
    #: round trip of the host's first packet; an ESP32 in modem-sleep answers in tens of ms
    wifi_network_delay: float = 0.0

"""The master CAN HAT's commands: what to send, how to recognise the reply, and what it means.

Requests and replies as ``uc2-stack.md`` §2.4 gives them: identity (``/state_get``), bus scan
(``/can_act scan``), bus health (``/can_get``), node restart (``/can_act restart``), and the reply shape
of ``/ota_start`` for the streaming method. Replies become frozen dataclasses, so no caller has to know
the firmware's key names. Pure: no I/O here.

Main constraint: a reply is the master's word, not ours. Fields the protocol promises and we need are
checked (:class:`~uc2otad.errors.LinkProtocolError` when missing); optional ones become None; one bad
scan entry is skipped with a warning instead of hiding the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from uc2otad.errors import LinkProtocolError, MasterError
from uc2otad.links.replies import ReplyShape, is_int_reply

_LOGGER = logging.getLogger(__name__)

#: what FW-main reports as every board's ``fwVersion`` (``CANopenModule.cpp:1248-1249`` @063e5a6): no
#: release string, so it names no image
UNVERSIONED = "UC2-ESP v2.0"
#: ``identifier_date`` as the firmware pastes it, ``__DATE__ "" __TIME__`` (``State.h:12`` @063e5a6, the
#: same at 14fa3e3): ``"Nov 27 202612:00:00"``, date and time without a space between
_PASTED_DATE = re.compile(r"([A-Z][a-z]{2} [ \d]\d \d{4})(\d{2}:\d{2}:\d{2})")
#: CAN node ids (CANopen: 1..127; 0 addresses the master itself in ``/can_act restart``)
MAX_NODE_ID = 127
#: the node id that makes ``/can_act restart`` restart the master
MASTER_ITSELF = 0
#: ``/ota_start`` errors the master sends before "ready" (``uc2-stack.md`` §2.2 step 2). Errors of the
#: streaming phase (``rx_timeout``, ``crc_mismatch``, …) are not replies to a new ``/ota_start``: one
#: left over from an earlier attempt must not be read as this attempt's answer (§8 item 6).
OTA_START_ERRORS = frozenset(
    {"missing_ota_object", "missing_nodeId_or_size", "invalid_nodeId", "invalid_size", "slave_unreachable"}
)


@dataclass(frozen=True)
class MasterIdentity:
    """What ``/state_get`` says about the board on the port."""

    name: str
    board_id: str
    #: compile date and time, ``"Jun 17 2026 07:17:22"`` (the space the firmware leaves out put back)
    build_date: str
    #: release string (``v2026.0.0-…``); None on firmware older than 2026-09-30
    version: str | None
    #: image file name the board was built as; None on older firmware
    image: str | None
    author: str
    #: the board configuration, e.g. ``UC2_canopen_master`` or ``UC2_3_CAN_HAT_Master``
    pindef: str

    @property
    def is_master(self) -> bool:
        """A master build: UC2-REST's ``requireMaster`` test."""
        return "master" in self.pindef.lower()

    @property
    def is_canopen(self) -> bool:
        """CANopen firmware (streams images); otherwise legacy firmware (WiFi OTA) (§10)."""
        return "canopen" in self.pindef.lower()


@dataclass(frozen=True)
class NodeInfo:
    """One board in a scan.

    ``reachable``: for a CANopen master, status 0 — the master heard the node within the last 5 s
    (``CANopenModule.cpp:611-633`` @063e5a6), so a node in a short reboot still counts; an unreachable
    node is listed without build, version and MAC. A legacy master lists only the nodes that answered,
    so every node it lists is reachable. ``answered``: the node answered during this scan — a CANopen
    node whose SDO reads came back (build, version or MAC present), or any node a legacy scan lists.
    """

    can_id: int
    #: the master's numeric type; -1 for a probed node outside the routing table
    device_type: int | None
    #: the master's type name: "motor", "laser", "led", "galvo", "unrouted", …
    role: str
    reachable: bool
    #: the master's status name: "idle", "unreachable", …
    status: str
    #: compile date and time of the node's image (OD 0x2508)
    build: str | None = None
    #: version string (OD 0x2500); "UC2-ESP v2.0" on firmware without release strings
    fw_version: str | None = None
    #: image file name, on newer firmware
    fw_image: str | None = None
    mac: str | None = None
    answered: bool = False
    #: the node answered an SDO read of 0x1000 (device type, the one object CiA 301 makes mandatory)
    #: on a link that talks CANopen itself: a direct CAN link can update it without the master
    canopen: bool = False


@dataclass(frozen=True)
class ScanResult:
    """A bus scan: the master's own identity (CANopen masters only) and the nodes."""

    nodes: tuple[NodeInfo, ...]
    #: the master as a node (can_id 1, build, fw_version, mac); None from a legacy master
    master: NodeInfo | None

    @property
    def canopen(self) -> bool:
        """The scan came in the CANopen form (with the master's own entry)."""
        return self.master is not None

    def node(self, can_id: int) -> NodeInfo | None:
        return next((node for node in self.nodes if node.can_id == can_id), None)


@dataclass(frozen=True)
class BusHealth:
    """``/can_get``: the master's CANopen state and the TWAI controller's error counters."""

    node_id: int
    can_role: int | None
    nmt_state: int | None
    nmt_state_name: str | None
    bus_state: str | None
    tx_errors: int | None
    rx_errors: int | None
    tx_failed: int | None
    bus_off_count: int | None


# ---- requests --------------------------------------------------------------------------------------


def state_command() -> dict[str, Any]:
    return {"task": "/state_get"}


def scan_command(probe_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """``/can_act scan``; with ``probe_range`` the master also SDO-probes ids outside its routing table.

    :raises ValueError: a probe range outside 1..127 or reversed
    """
    command: dict[str, Any] = {"task": "/can_act", "scan": True}
    if probe_range is not None:
        first, last = probe_range
        if not 1 <= first <= last <= MAX_NODE_ID:
            raise ValueError(f"probe range must lie within 1..{MAX_NODE_ID}, not {first}..{last}")
        command.update({"probeRange": True, "from": first, "to": last})
    return command


def bus_health_command() -> dict[str, Any]:
    return {"task": "/can_get"}


def restart_command(node_id: int) -> dict[str, Any]:
    """``/can_act restart``: node 1..127, or 0 for the master itself.

    :raises ValueError: ``node_id`` outside 0..127
    """
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node id must be 0..{MAX_NODE_ID}, not {node_id}")
    return {"task": "/can_act", "restart": node_id}


# ---- reply shapes (for replies without a usable qid) ------------------------------------------------

#: a handler's int result, ``{"qid": <result>, "success": …}`` (legacy ``/can_act ota``, ``/state_act``)
INT_REPLY = ReplyShape("int reply", is_int_reply)
#: ``/can_get`` answers with the master's node id and CAN role, no qid
BUS_HEALTH_REPLY = ReplyShape("/can_get reply", lambda message: "nodeId" in message and "canRole" in message)


def restart_reply(node_id: int) -> ReplyShape:
    """``{"status":"ok"|"error","nodeId":N}`` from a CANopen master, an int reply from a legacy one."""
    return ReplyShape(
        f"restart reply for node {node_id}",
        lambda message: is_int_reply(message) or ("status" in message and message.get("nodeId") == node_id),
    )


def ota_start_reply(node_id: int, size: int) -> ReplyShape:
    """The master's answer to ``/ota_start``: "ready" for this node and size, or a pre-ready error."""

    def matches(message: Mapping[str, Any]) -> bool:
        status = message.get("ota_status")
        if status == "ready":
            return message.get("nodeId") == node_id and message.get("size") == size
        return status == "error" and message.get("error") in OTA_START_ERRORS

    return ReplyShape(f"/ota_start reply for node {node_id}", matches)


# ---- replies ---------------------------------------------------------------------------------------


def parse_identity(reply: Mapping[str, Any]) -> MasterIdentity:
    """:raises LinkProtocolError: no ``state`` object"""
    state = reply.get("state")
    if not isinstance(state, Mapping):
        raise LinkProtocolError(f"/state_get reply has no state object: keys={sorted(reply)}")
    return MasterIdentity(
        name=_text(state, "identifier_name") or "",
        board_id=_text(state, "identifier_id") or "",
        build_date=_build_date(_text(state, "identifier_date") or ""),
        version=_text(state, "identifier_version"),
        image=_text(state, "identifier_image"),
        author=_text(state, "identifier_author") or "",
        pindef=_text(state, "pindef") or "",
    )


def _build_date(text: str) -> str:
    """``identifier_date`` as ``__DATE__ " " __TIME__`` writes it, comparable with an image's build."""
    pasted = _PASTED_DATE.fullmatch(text)
    return f"{pasted.group(1)} {pasted.group(2)}" if pasted else text


def parse_scan(reply: Mapping[str, Any]) -> ScanResult:
    """:raises LinkProtocolError: no ``scan`` list"""
    entries = reply.get("scan")
    if not isinstance(entries, list):
        raise LinkProtocolError(f"scan reply has no scan list: keys={sorted(reply)}")
    canopen = isinstance(reply.get("master"), Mapping)
    nodes: list[NodeInfo] = []
    for entry in entries:
        node = _scan_entry(entry, listed_means_reachable=not canopen)
        if node is None:
            _LOGGER.warning("scan: skipped an entry without a CAN id: %.80r", entry)
        else:
            nodes.append(node)
    master = _scan_entry(reply["master"], listed_means_reachable=True, role="master") if canopen else None
    return ScanResult(nodes=tuple(nodes), master=master)


def parse_bus_health(reply: Mapping[str, Any]) -> BusHealth:
    """:raises LinkProtocolError: no node id"""
    node_id = _integer(reply, "nodeId")
    if node_id is None:
        raise LinkProtocolError(f"/can_get reply has no nodeId: keys={sorted(reply)}")
    bus = reply.get("bus")
    bus = bus if isinstance(bus, Mapping) else {}
    return BusHealth(
        node_id=node_id,
        can_role=_integer(reply, "canRole"),
        nmt_state=_integer(reply, "nmtState"),
        nmt_state_name=_text(reply, "nmtStateStr"),
        bus_state=_text(bus, "state"),
        tx_errors=_integer(bus, "txErr"),
        rx_errors=_integer(bus, "rxErr"),
        tx_failed=_integer(bus, "txFailed"),
        bus_off_count=_integer(bus, "busOffCount"),
    )


def check_restart(reply: Mapping[str, Any], node_id: int) -> None:
    """:raises MasterError: the master could not restart the node"""
    if is_int_reply(reply):
        failed = not isinstance(reply.get("success"), int) or reply["success"] < 0
        error = f"success={reply.get('success')}"
    else:
        failed = reply.get("status") != "ok"
        error = str(reply.get("error") or reply.get("status"))
    if failed:
        raise MasterError(f"master could not restart node {node_id}: {error}", code=error)


def _scan_entry(entry: Any, *, listed_means_reachable: bool, role: str | None = None) -> NodeInfo | None:
    """One entry; None when it has no CAN id. A CANopen entry is reachable when its status is 0."""
    if not isinstance(entry, Mapping):
        return None
    can_id = _integer(entry, "canId")
    if can_id is None:
        return None
    status = _integer(entry, "status")
    reachable = listed_means_reachable or status == 0
    read_back = any(isinstance(entry.get(key), str) for key in ("build", "fwVersion", "mac"))
    return NodeInfo(
        can_id=can_id,
        device_type=_integer(entry, "deviceType"),
        role=role or _text(entry, "deviceTypeStr") or "unknown",
        reachable=reachable,
        status=_text(entry, "statusStr") or ("" if status is None else str(status)),
        build=_text(entry, "build"),
        fw_version=_text(entry, "fwVersion"),
        fw_image=_text(entry, "fwImage"),
        mac=_text(entry, "mac"),
        answered=listed_means_reachable or (reachable and read_back),
    )


def _text(source: Mapping[str, Any], key: str) -> str | None:
    value = source.get(key)
    return value if isinstance(value, str) else None


def _integer(source: Mapping[str, Any], key: str) -> int | None:
    value = source.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None

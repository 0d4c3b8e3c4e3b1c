"""Ask a slave, through a legacy master, to join WiFi and open ArduinoOTA: the WiFi method's first step.

The exchange of ``uc2-stack.md`` §2.3 (FW-legacy; CANopen firmware ignores it):

1. ``{"task":"/can_act","ota":{"canid":N,"ssid":…,"password":…,"timeout":ms}}`` with a qid; the master
   answers at once with its int reply, ``{"qid":0,"success":0}`` once the CAN message is queued, or
   ``success`` -1 (missing keys, not a master build);
2. later — the slave tries WiFi for up to 30 s — the slave's answer comes as an unsolicited frame
   ``{"ota":{"canId":N,"status":0|1|2,"statusMsg":…,"ip":…,"hostname":"UC2-CAN-B.local"}}``: 0 joined
   and serving ArduinoOTA at ``ip``, 1 "WiFi connection failed", 2 "OTA start failed".

Main constraint: the command carries the WiFi password. The link masks it in everything it logs, and
nothing here puts it into a message or an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uc2otad.errors import MasterError, MasterUnsupportedError, WifiJoinError, WifiJoinTimeoutError
from uc2otad.links.commands import INT_REPLY, MAX_NODE_ID
from uc2otad.links.hat_channel import HatChannel
from uc2otad.links.protocol import WifiOtaResult
from uc2otad.links.replies import EventStream, JsonObject

_LOGGER = logging.getLogger(__name__)

#: seconds for the slave's answer: it tries WiFi for up to 30 s inside its CAN task (FW-legacy
#: ``handleOtaCommand``), then starts mDNS and ArduinoOTA before it answers
WIFI_EVENT_TIMEOUT = 45.0
#: seconds for the master's int reply: it comes as soon as the CAN message is queued
COMMAND_TIMEOUT = 2.0
#: the OTA window the slave opens unless asked otherwise: the procedure document's 300000 ms
DEFAULT_WINDOW_MS = 300_000
#: the firmware's struct fields: ``char ssid[32]; char password[64]`` with their NUL (§3.3)
MAX_SSID_BYTES = 31
MAX_PASSWORD_BYTES = 63
#: the slave's status for "joined, ArduinoOTA running"
JOINED = 0


@dataclass(frozen=True)
class WifiOtaSettings:
    """Timeouts of the WiFi trigger; defaults as the constants above."""

    command_timeout: float = COMMAND_TIMEOUT
    event_timeout: float = WIFI_EVENT_TIMEOUT


def wifi_ota_command(can_id: int, ssid: str, password: str, timeout_ms: int) -> dict[str, Any]:
    """The command as UC2-REST's ``canota.start_ota_update`` sends it (keys in lower case: ``canid``)."""
    return {
        "task": "/can_act",
        "ota": {"canid": can_id, "ssid": ssid, "password": password, "timeout": timeout_ms},
    }


async def start_wifi_ota(
    link: HatChannel,
    can_id: int,
    ssid: str,
    password: str,
    *,
    timeout_ms: int,
    settings: WifiOtaSettings,
    on_accepted: Callable[[JsonObject], None] | None = None,
) -> WifiOtaResult:
    """Trigger the WiFi OTA of node ``can_id``; see :meth:`SerialHatLink.start_wifi_ota`."""
    _check_arguments(can_id, ssid, password, timeout_ms)
    if link.identity is not None and link.identity.is_canopen:
        raise MasterUnsupportedError(
            f"{link.name}: a CANopen master ({link.identity.pindef}) ignores WiFi OTA; stream instead",
            port=link.name,
            code="unsupported",
            node_id=can_id,
        )
    name = f"{link.name}: node {can_id}"
    async with link.listen("ota") as events:  # before the command: the answer must not slip past
        reply = await link.request(
            wifi_ota_command(can_id, ssid, password, timeout_ms),
            reply=INT_REPLY,
            timeout=settings.command_timeout,
        )
        if not isinstance(reply.get("success"), int) or reply["success"] < 0:
            code = f"success={reply.get('success')}"
            raise MasterError(
                f"{name}: the master refused the WiFi OTA command ({code})", code=code, node_id=can_id
            )
        _LOGGER.info("%s: WiFi OTA command accepted ssid=%s window=%dms", name, ssid, timeout_ms)
        if on_accepted is not None:
            on_accepted(reply)
        try:
            async with asyncio.timeout(settings.event_timeout):
                answer = await _answer_of(events, can_id)
        except TimeoutError as err:
            raise WifiJoinTimeoutError(
                f"{name}: no answer to the WiFi OTA command within {settings.event_timeout}s", can_id=can_id
            ) from err
    return _result(name, can_id, answer)


def _check_arguments(can_id: int, ssid: str, password: str, timeout_ms: int) -> None:
    """:raises ValueError: what the firmware's fields cannot carry (the password is never quoted)"""
    if not 1 <= can_id <= MAX_NODE_ID:
        raise ValueError(f"CAN id must be 1..{MAX_NODE_ID}, not {can_id}")
    if not 1 <= len(ssid.encode()) <= MAX_SSID_BYTES:
        raise ValueError(f"SSID must be 1..{MAX_SSID_BYTES} bytes, not {len(ssid.encode())}")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the WiFi password must be at most {MAX_PASSWORD_BYTES} bytes")
    if not 0 <= timeout_ms <= 0xFFFFFFFF:
        raise ValueError(f"timeout must be 0..{0xFFFFFFFF} ms, not {timeout_ms}")


async def _answer_of(events: EventStream, can_id: int) -> dict[str, Any]:
    """The next ``ota`` answer from node ``can_id`` (answers of other nodes are theirs)."""
    while True:
        message = await events.get()
        answer = message.get("ota")
        if isinstance(answer, dict) and answer.get("canId") == can_id:
            return answer


def _result(name: str, can_id: int, answer: dict[str, Any]) -> WifiOtaResult:
    """:raises WifiJoinError: the slave reports that it failed"""
    status = answer.get("status")
    status_msg = str(answer.get("statusMsg", ""))
    if status != JOINED:
        raise WifiJoinError(
            f"{name}: {status_msg or 'WiFi OTA failed'} (status={status})",
            can_id=can_id,
            status=status if isinstance(status, int) else None,
            status_msg=status_msg,
        )
    result = WifiOtaResult(
        can_id, JOINED, status_msg, str(answer.get("ip", "")), str(answer.get("hostname", ""))
    )
    _LOGGER.info("%s: joined WiFi ip=%s hostname=%s", name, result.ip, result.hostname)
    return result

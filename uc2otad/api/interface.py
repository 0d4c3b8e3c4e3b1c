"""The ``org.openuc2.OTA1`` interface: check arguments, call the engine, turn results into variants.

Argument rules are the contract's (CONTRACT.md §1); every failure leaves as a named D-Bus error
(:mod:`uc2otad.api.errors`).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from dbus_fast import Variant
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from uc2otad.api import names
from uc2otad.api.arguments import (
    MAX_PASSWORD_BYTES,
    MAX_REASON_LENGTH,
    check_length,
    check_options,
    check_server_url,
    check_ssid,
    quoted,
)
from uc2otad.api.errors import translated
from uc2otad.api.signatures import dbus_types
from uc2otad.api.variants import read_options, to_variant_dict
from uc2otad.contract import Link
from uc2otad.engine.batch import DELAY_BETWEEN, PARALLEL
from uc2otad.engine.batch_plan import check_roles
from uc2otad.engine.core import Engine, Event, StatusChanged, USBFlashChanged, check_can_id
from uc2otad.errors import InvalidArgumentError

_LOGGER = logging.getLogger(__name__)

#: the unique bus name of the caller of the method being dispatched (set by the service's message
#: handler just before dispatch; dbus-fast does not hand the message to the method)
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("uc2otad_caller", default="")

VariantDict = dict[str, Variant]
#: StartOTA's options and their D-Bus types (CONTRACT.md §1)
START_OPTIONS = {"ssid": "s", "password": "s", "timeout": "u", "method": "s", "firmware": "s", "force": "b",
                 "link": "s", "allow_downgrade": "b", "skip_checks": "as"}  # fmt: skip
#: StartMultipleOTA's: StartOTA's, the batch's pace and its plan (issue 19: stop at the first failed board,
#: boards by role, the master last over USB, a dry run)
BATCH_OPTIONS = {**START_OPTIONS, "delay_between": "u", "parallel": "u", "stop_on_failure": "b",
                 "include_master": "b", "master_port": "s", "roles": "as", "dry_run": "b"}  # fmt: skip
#: the WiFi window a slave may be asked for, in ms (CONTRACT.md §1: 1000…3600000)
MIN_TIMEOUT_MS = 1000
MAX_TIMEOUT_MS = 3_600_000
#: FlashMaster's options and their D-Bus types (CONTRACT.md §4); values are checked by the engine
FLASH_OPTIONS = {"port": "s", "match": "s", "baud": "u", "flash_offset": "u", "erase_flash": "b",
                 "reconnect_after": "b", "firmware": "s", "chip": "s"}  # fmt: skip
#: ClearFirmwareCacheWithOptions' options (issue 20: the images kept for a rollback stay unless asked)
CLEAR_OPTIONS = {"include_known_good": "b"}
#: seconds between the boards of a batch, and boards at once (CONTRACT.md §1)
MAX_DELAY_BETWEEN = 600
MAX_PARALLEL = 8


class OTA1Interface(ServiceInterface):
    """Exported at ``/org/openuc2/OTA1``; forwards engine events as signals and PropertiesChanged."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(names.INTERFACE)
        self._engine = engine
        self._unsubscribe = engine.subscribe(self._forward)

    def close(self) -> None:
        self._unsubscribe()

    def _forward(self, event: Event) -> None:
        if isinstance(event, StatusChanged):
            self.ota_status_changed(event.can_id, to_variant_dict(event.status))
        elif isinstance(event, USBFlashChanged):
            self.usb_flash_status_changed(to_variant_dict(event.status))
        else:
            self.emit_properties_changed({names.PROPERTY_NAMES[event.name]: event.value})

    # ---- status -------------------------------------------------------------------------------------

    @method(name="GetStatus")
    @dbus_types("u", returns="a{sv}")
    @translated
    async def get_status(self, can_id: int) -> VariantDict:
        return to_variant_dict(await self._engine.get_status(check_can_id(can_id)))

    @method(name="GetAllStatus")
    @dbus_types(returns="a{sa{sv}}")
    @translated
    async def get_all_status(self) -> dict[str, VariantDict]:
        statuses = await self._engine.all_status()
        return {str(can_id): to_variant_dict(status) for can_id, status in sorted(statuses.items())}

    @method(name="GetHistory")
    @dbus_types("u", returns="aa{sv}")
    @translated
    async def get_history(self, can_id: int) -> list[VariantDict]:
        jobs = await self._engine.history(check_can_id(can_id, allow_all=True))
        return [to_variant_dict(job.as_dict()) for job in jobs]

    # ---- firmware -----------------------------------------------------------------------------------

    @method(name="ListFirmware")
    @dbus_types(returns="a{sv}")
    @translated
    async def list_firmware(self) -> VariantDict:
        return to_variant_dict(await self._engine.list_firmware())

    @method(name="SetFirmwareServer")
    @dbus_types("s")
    @translated
    async def set_firmware_server(self, url: str) -> None:
        await self._engine.set_firmware_server(check_server_url(url))

    @method(name="ClearFirmwareCache")
    @dbus_types()
    @translated
    async def clear_firmware_cache(self) -> None:
        await self._engine.clear_firmware_cache()

    @method(name="ImportFirmware")
    @dbus_types("h", returns="a{sv}")
    @translated
    async def import_firmware(self, bundle: int) -> VariantDict:
        """The caller's open file (a release bundle): the daemon reads it by descriptor, never by path."""
        return to_variant_dict(await self._engine.import_firmware(bundle))

    @method(name="ClearFirmwareCacheWithOptions")
    @dbus_types("a{sv}", returns="a{sv}")
    @translated
    async def clear_firmware_cache_with_options(self, options: VariantDict) -> VariantDict:
        everything = bool(read_options(options, CLEAR_OPTIONS).get("include_known_good"))
        return to_variant_dict(await self._engine.clear_firmware_cache(include_known_good=everything))

    # ---- updates ----------------------------------------------------------------------------------------

    @method(name="StartOTA")
    @dbus_types("u", "a{sv}", returns="a{sv}")
    @translated
    async def start_ota(self, can_id: int, options: VariantDict) -> VariantDict:
        values = _update_options(options, START_OPTIONS)
        return to_variant_dict(await self._engine.start_ota(can_id, values))

    @method(name="StartMultipleOTA")
    @dbus_types("au", "a{sv}", returns="a{sv}")
    @translated
    async def start_multiple_ota(self, can_ids: list[int], options: VariantDict) -> VariantDict:
        values = _update_options(options, BATCH_OPTIONS)
        delay_between = values.pop("delay_between", DELAY_BETWEEN)
        parallel = values.pop("parallel", PARALLEL)
        if not 0 <= delay_between <= MAX_DELAY_BETWEEN:
            raise InvalidArgumentError(f"delay_between must be 0..{MAX_DELAY_BETWEEN} s, not {delay_between}")
        if not 1 <= parallel <= MAX_PARALLEL:
            raise InvalidArgumentError(f"parallel must be 1..{MAX_PARALLEL}, not {parallel}")
        if "roles" in values:
            values["roles"] = check_roles(values["roles"])
        started = await self._engine.start_multiple_ota(
            list(can_ids), values, parallel=parallel, delay_between=delay_between
        )
        return to_variant_dict(started)

    @method(name="Rollback")
    @dbus_types("u", returns="a{sv}")
    @translated
    async def rollback(self, can_id: int) -> VariantDict:
        return to_variant_dict(await self._engine.rollback(check_can_id(can_id)))

    @method(name="Cancel")
    @dbus_types("u")
    @translated
    async def cancel(self, can_id: int) -> None:
        await self._engine.cancel(can_id)

    # ---- the bus ----------------------------------------------------------------------------------------

    @method(name="ScanDevices")
    @dbus_types(returns="aa{sv}")
    @translated
    async def scan_devices(self) -> list[VariantDict]:
        return [to_variant_dict(board) for board in await self._engine.scan_devices()]

    @method(name="CheckUpdates")
    @dbus_types(returns="aa{sv}")
    @translated
    async def check_updates(self) -> list[VariantDict]:
        return [to_variant_dict(board) for board in await self._engine.check_updates()]

    # ---- settings -----------------------------------------------------------------------------------

    @method(name="SetWiFiCredentials")
    @dbus_types("s", "s")
    @translated
    async def set_wifi_credentials(self, ssid: str, password: str) -> None:
        check_length("password", password, MAX_PASSWORD_BYTES, in_bytes=True)
        await self._engine.set_wifi_credentials(check_ssid(ssid), password)

    @method(name="SetOTAPassword")
    @dbus_types("s")
    @translated
    async def set_ota_password(self, password: str) -> None:
        await self._engine.set_ota_password(password)  # checked there: the message never quotes it

    # ---- inhibit ------------------------------------------------------------------------------------

    @method(name="Inhibit")
    @dbus_types("s", returns="s")
    @translated
    async def inhibit(self, reason: str) -> str:
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_LENGTH or not reason.isprintable():
            raise InvalidArgumentError(f"reason must be 1..{MAX_REASON_LENGTH} printable characters")
        return self._engine.inhibitors.inhibit(reason, CALLER.get() or "unknown")

    @method(name="Uninhibit")
    @dbus_types("s")
    @translated
    async def uninhibit(self, cookie: str) -> None:
        self._engine.inhibitors.uninhibit(cookie)

    # ---- USB flashing of the master ---------------------------------------------------------------

    @method(name="ListSerialPorts")
    @dbus_types(returns="aa{sv}")
    @translated
    async def list_serial_ports(self) -> list[VariantDict]:
        return [to_variant_dict(port) for port in await self._engine.usb.list_serial_ports()]

    @method(name="FlashMaster")
    @dbus_types("a{sv}", returns="a{sv}")
    @translated
    async def flash_master(self, options: VariantDict) -> VariantDict:
        values = check_options(read_options(options, FLASH_OPTIONS))
        return to_variant_dict(self._engine.usb.flash_master(values))

    @method(name="GetUSBFlashStatus")
    @dbus_types(returns="a{sv}")
    @translated
    async def get_usb_flash_status(self) -> VariantDict:
        return to_variant_dict(self._engine.usb.current())

    # ---- signals ------------------------------------------------------------------------------------

    @signal(name="OTAStatusChanged")
    @dbus_types("u", "a{sv}", returns="ua{sv}")
    def ota_status_changed(self, can_id: int, status: VariantDict) -> list[Any]:
        # a list, not a tuple: dbus-fast 1.84 (Debian 12) takes only a list for a signal's arguments
        return [can_id, status]

    @signal(name="USBFlashStatusChanged")
    @dbus_types("a{sv}", returns="a{sv}")
    def usb_flash_status_changed(self, status: VariantDict) -> VariantDict:
        return status

    # ---- properties ---------------------------------------------------------------------------------

    @dbus_property(name="Version", access=PropertyAccess.READ)
    @dbus_types(returns="s")
    def version(self) -> str:
        return self._engine.properties.version

    @dbus_property(name="FirmwareServer", access=PropertyAccess.READ)
    @dbus_types(returns="s")
    def firmware_server(self) -> str:
        return self._engine.properties.firmware_server

    @dbus_property(name="WiFiSSID", access=PropertyAccess.READ)
    @dbus_types(returns="s")
    def wifi_ssid(self) -> str:
        return self._engine.properties.wifi_ssid

    @dbus_property(name="MasterConnected", access=PropertyAccess.READ)
    @dbus_types(returns="b")
    def master_connected(self) -> bool:
        return self._engine.properties.master_connected

    @dbus_property(name="CanConnected", access=PropertyAccess.READ)
    @dbus_types(returns="b")
    def can_connected(self) -> bool:
        return self._engine.properties.can_connected

    @dbus_property(name="Busy", access=PropertyAccess.READ)
    @dbus_types(returns="b")
    def busy(self) -> bool:
        return self._engine.properties.busy

    @dbus_property(name="Inhibited", access=PropertyAccess.READ)
    @dbus_types(returns="b")
    def inhibited(self) -> bool:
        return self._engine.properties.inhibited

    @dbus_property(name="Progress", access=PropertyAccess.READ)
    @dbus_types(returns="u")
    def progress(self) -> int:
        return self._engine.properties.progress

    @dbus_property(name="LastError", access=PropertyAccess.READ)
    @dbus_types(returns="s")
    def last_error(self) -> str:
        return self._engine.properties.last_error


def _update_options(options: VariantDict, allowed: dict[str, str]) -> dict[str, Any]:
    """StartOTA's and StartMultipleOTA's options, typed and within the contract's ranges."""
    values = dict(check_options(read_options(options, allowed)))
    if "ssid" in values:
        check_ssid(values["ssid"])
    if values.get("method", "auto") not in ("auto", "wifi", "can"):
        raise InvalidArgumentError(f"method must be auto, wifi or can, not {quoted(values['method'])}")
    if values.get("link", "auto") not in ("auto", *Link):
        raise InvalidArgumentError(f"link must be auto, master or can, not {quoted(values['link'])}")
    if "timeout" in values and not MIN_TIMEOUT_MS <= values["timeout"] <= MAX_TIMEOUT_MS:
        raise InvalidArgumentError(f"timeout must be {MIN_TIMEOUT_MS}..{MAX_TIMEOUT_MS} ms")
    return values

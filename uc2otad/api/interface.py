"""The ``org.openuc2.OTA1`` interface: check arguments, call the engine, turn results into variants.

Argument rules are the contract's (CONTRACT.md §1); every failure leaves as a named D-Bus error
(:mod:`uc2otad.api.errors`). Methods that start updates or flash join this interface when they are
built: no placeholders.
"""

from __future__ import annotations

import contextvars
import logging

from dbus_fast import Variant
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from uc2otad.api import names
from uc2otad.api.errors import translated
from uc2otad.api.signatures import dbus_types
from uc2otad.api.variants import read_options, to_variant_dict
from uc2otad.engine.core import Engine, PropertyChanged, StatusChanged, check_can_id
from uc2otad.errors import InvalidArgumentError

_LOGGER = logging.getLogger(__name__)

#: the unique bus name of the caller of the method being dispatched (set by the service's message
#: handler just before dispatch; dbus-fast does not hand the message to the method)
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("uc2otad_caller", default="")
#: an inhibit reason is shown to people; keep it to a line
MAX_REASON_LENGTH = 256

VariantDict = dict[str, Variant]
#: StartOTA's options and their D-Bus types (CONTRACT.md §1)
START_OPTIONS = {"ssid": "s", "password": "s", "timeout": "u", "method": "s", "firmware": "s", "force": "b"}
#: the WiFi window a slave may be asked for, in ms (CONTRACT.md §1: 1000…3600000)
MIN_TIMEOUT_MS = 1000
MAX_TIMEOUT_MS = 3_600_000


class OTA1Interface(ServiceInterface):
    """Exported at ``/org/openuc2/OTA1``; forwards engine events as signals and PropertiesChanged."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(names.INTERFACE)
        self._engine = engine
        self._unsubscribe = engine.subscribe(self._forward)

    def close(self) -> None:
        self._unsubscribe()

    def _forward(self, event: StatusChanged | PropertyChanged) -> None:
        if isinstance(event, StatusChanged):
            self.ota_status_changed(event.can_id, to_variant_dict(event.status))
        else:
            self.emit_properties_changed({event.name: event.value})

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
        await self._engine.set_firmware_server(url)

    @method(name="ClearFirmwareCache")
    @dbus_types()
    @translated
    async def clear_firmware_cache(self) -> None:
        await self._engine.clear_firmware_cache()

    # ---- updates ----------------------------------------------------------------------------------------

    @method(name="StartOTA")
    @dbus_types("u", "a{sv}", returns="a{sv}")
    @translated
    async def start_ota(self, can_id: int, options: VariantDict) -> VariantDict:
        values = read_options(options, START_OPTIONS)
        if values.get("method", "auto") not in ("auto", "wifi", "can"):
            raise InvalidArgumentError(f"method must be auto, wifi or can, not {values['method']!r}")
        if "timeout" in values and not MIN_TIMEOUT_MS <= values["timeout"] <= MAX_TIMEOUT_MS:
            raise InvalidArgumentError(f"timeout must be {MIN_TIMEOUT_MS}..{MAX_TIMEOUT_MS} ms")
        return to_variant_dict(await self._engine.start_ota(can_id, values))

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

    # ---- settings -----------------------------------------------------------------------------------

    @method(name="SetWiFiCredentials")
    @dbus_types("s", "s")
    @translated
    async def set_wifi_credentials(self, ssid: str, password: str) -> None:
        await self._engine.set_wifi_credentials(ssid, password)

    # ---- inhibit ------------------------------------------------------------------------------------

    @method(name="Inhibit")
    @dbus_types("s", returns="s")
    @translated
    async def inhibit(self, reason: str) -> str:
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_LENGTH or not reason.isprintable():
            raise InvalidArgumentError(f"reason must be 1..{MAX_REASON_LENGTH} printable characters")
        return self._engine.inhibit(reason, CALLER.get() or "unknown")

    @method(name="Uninhibit")
    @dbus_types("s")
    @translated
    async def uninhibit(self, cookie: str) -> None:
        self._engine.uninhibit(cookie)

    # ---- signals ------------------------------------------------------------------------------------

    @signal(name="OTAStatusChanged")
    @dbus_types("u", "a{sv}", returns="ua{sv}")
    def ota_status_changed(self, can_id: int, status: VariantDict) -> tuple[int, VariantDict]:
        return can_id, status

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

"""The ``org.openuc2.OTA1`` interface: check arguments, call the engine, turn results into variants.

Argument rules are the contract's (CONTRACT.md §1); every failure leaves as a named D-Bus error
(:mod:`uc2otad.api.errors`). Methods that start updates or flash join this interface when they are
built: no placeholders.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads these annotations at class creation,
# and would take the string "None" of a method without a result for a D-Bus signature.
import contextvars
import logging
from typing import Annotated

from dbus_fast import Variant
from dbus_fast.annotations import DBusBool, DBusDict, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from uc2otad.api import names
from uc2otad.api.errors import translated
from uc2otad.api.variants import to_variant_dict
from uc2otad.engine.core import Engine, PropertyChanged, StatusChanged, check_can_id
from uc2otad.errors import InvalidArgumentError

_LOGGER = logging.getLogger(__name__)

#: the unique bus name of the caller of the method being dispatched (set by the service's message
#: handler just before dispatch; dbus-fast does not hand the message to the method)
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("uc2otad_caller", default="")
#: an inhibit reason is shown to people; keep it to a line
MAX_REASON_LENGTH = 256

DBusStatusMap = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{sa{sv}}")]
DBusDictList = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]


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

    @dbus_method(name="GetStatus")
    @translated
    async def get_status(self, can_id: DBusUInt32) -> DBusDict:
        return to_variant_dict(await self._engine.get_status(check_can_id(can_id)))

    @dbus_method(name="GetAllStatus")
    @translated
    async def get_all_status(self) -> DBusStatusMap:
        statuses = await self._engine.all_status()
        return {str(can_id): to_variant_dict(status) for can_id, status in sorted(statuses.items())}

    @dbus_method(name="GetHistory")
    @translated
    async def get_history(self, can_id: DBusUInt32) -> DBusDictList:
        jobs = await self._engine.history(check_can_id(can_id, allow_all=True))
        return [to_variant_dict(job.as_dict()) for job in jobs]

    # ---- firmware -----------------------------------------------------------------------------------

    @dbus_method(name="ListFirmware")
    @translated
    async def list_firmware(self) -> DBusDict:
        return to_variant_dict(await self._engine.list_firmware())

    @dbus_method(name="SetFirmwareServer")
    @translated
    async def set_firmware_server(self, url: DBusStr) -> None:
        await self._engine.set_firmware_server(url)

    @dbus_method(name="ClearFirmwareCache")
    @translated
    async def clear_firmware_cache(self) -> None:
        await self._engine.clear_firmware_cache()

    # ---- settings -----------------------------------------------------------------------------------

    @dbus_method(name="SetWiFiCredentials")
    @translated
    async def set_wifi_credentials(self, ssid: DBusStr, password: DBusStr) -> None:
        await self._engine.set_wifi_credentials(ssid, password)

    # ---- inhibit ------------------------------------------------------------------------------------

    @dbus_method(name="Inhibit")
    @translated
    async def inhibit(self, reason: DBusStr) -> DBusStr:
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_LENGTH or not reason.isprintable():
            raise InvalidArgumentError(f"reason must be 1..{MAX_REASON_LENGTH} printable characters")
        return self._engine.inhibit(reason, CALLER.get() or "unknown")

    @dbus_method(name="Uninhibit")
    @translated
    async def uninhibit(self, cookie: DBusStr) -> None:
        self._engine.uninhibit(cookie)

    # ---- signals ------------------------------------------------------------------------------------

    @dbus_signal(name="OTAStatusChanged")
    def ota_status_changed(
        self, can_id: int, status: dict[str, Variant]
    ) -> Annotated[tuple[int, dict[str, Variant]], DBusSignature("ua{sv}")]:
        return can_id, status

    # ---- properties ---------------------------------------------------------------------------------

    @dbus_property(name="Version", access=PropertyAccess.READ)
    def version(self) -> DBusStr:
        return self._engine.properties.version

    @dbus_property(name="FirmwareServer", access=PropertyAccess.READ)
    def firmware_server(self) -> DBusStr:
        return self._engine.properties.firmware_server

    @dbus_property(name="WiFiSSID", access=PropertyAccess.READ)
    def wifi_ssid(self) -> DBusStr:
        return self._engine.properties.wifi_ssid

    @dbus_property(name="MasterConnected", access=PropertyAccess.READ)
    def master_connected(self) -> DBusBool:
        return self._engine.properties.master_connected

    @dbus_property(name="Busy", access=PropertyAccess.READ)
    def busy(self) -> DBusBool:
        return self._engine.properties.busy

    @dbus_property(name="Inhibited", access=PropertyAccess.READ)
    def inhibited(self) -> DBusBool:
        return self._engine.properties.inhibited

    @dbus_property(name="Progress", access=PropertyAccess.READ)
    def progress(self) -> DBusUInt32:
        return self._engine.properties.progress

    @dbus_property(name="LastError", access=PropertyAccess.READ)
    def last_error(self) -> DBusStr:
        return self._engine.properties.last_error

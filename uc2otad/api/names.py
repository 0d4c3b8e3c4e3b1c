"""Every D-Bus name of the service, in one place (as bleak keeps BlueZ's in ``defs.py``)."""

BUS_NAME = "org.openuc2.OTA1"
OBJECT_PATH = "/org/openuc2/OTA1"
INTERFACE = "org.openuc2.OTA1"
ERROR_PREFIX = "org.openuc2.OTA1.Error."

#: CONTRACT.md §1 error names
INVALID_ARGUMENT = ERROR_PREFIX + "InvalidArgument"
NOT_FOUND = ERROR_PREFIX + "NotFound"
BUSY = ERROR_PREFIX + "Busy"
INHIBITED = ERROR_PREFIX + "Inhibited"
NOT_CONNECTED = ERROR_PREFIX + "NotConnected"
NOT_PERMITTED = ERROR_PREFIX + "NotPermitted"
#: issue 19: a check before the update failed (its reason in the message)
UNHEALTHY = ERROR_PREFIX + "Unhealthy"
#: issue 21: the firmware server's files are not signed by a trusted key (the reason in the message)
SIGNATURE_INVALID = ERROR_PREFIX + "SignatureInvalid"
FAILED = ERROR_PREFIX + "Failed"

#: the engine's property (``Properties`` field) → its D-Bus property name
PROPERTY_NAMES = {
    "version": "Version",
    "firmware_server": "FirmwareServer",
    "wifi_ssid": "WiFiSSID",
    "master_connected": "MasterConnected",
    "can_connected": "CanConnected",
    "busy": "Busy",
    "inhibited": "Inhibited",
    "progress": "Progress",
    "last_error": "LastError",
}

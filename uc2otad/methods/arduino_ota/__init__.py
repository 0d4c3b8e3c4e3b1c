"""The WiFi method's upload step: ArduinoOTA (espota protocol), streaming instead of stop-and-wait.

``auth`` answers the board's challenge, ``invitation`` is the UDP half, ``replies`` reads the board's
ack stream and final word, and ``uploader`` runs an upload end to end. ``python -m uc2otad.espota`` is the
command-line face of :class:`ArduinoOtaUploader`.
"""

from uc2otad.methods.arduino_ota.auth import AuthScheme
from uc2otad.methods.arduino_ota.invitation import OtaCommand
from uc2otad.methods.arduino_ota.uploader import (
    ARDUINO_OTA_PORT,
    ArduinoOtaUploader,
    UploadResult,
    UploadSettings,
    UploadState,
)

__all__ = [
    "ARDUINO_OTA_PORT",
    "ArduinoOtaUploader",
    "AuthScheme",
    "OtaCommand",
    "UploadResult",
    "UploadSettings",
    "UploadState",
]

"""The one place secrets live: the WiFi password and the OTA password, each in a 0600 file in the state
directory; and the checks of what the firmware can carry (SSID, WiFi password, OTA password), used by
the settings and the engine.

The WiFi password is sent to a slave over CAN for the WiFi method, and the OTA password answers the
slave's ArduinoOTA challenge (a lab's build that calls ``ArduinoOTA.setPassword``), so the daemon must
keep both; they are never logged, never returned over D-Bus, never put in argv or in the SQLite
database. Both files go through :func:`write_secret`: created with mode 0600 from the start
(``os.open`` with the mode, not a chmod afterwards), written to a temporary name and renamed, so they
are never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
from pathlib import Path

from uc2otad.errors import ConfigError

PASSWORD_FILE = "wifi-password"
#: the ArduinoOTA password of the slaves (SetOTAPassword); no file: none is stored
OTA_PASSWORD_FILE = "ota-password"
#: WPA2 passphrases are 8..63 characters; empty means an open network (CONTRACT.md §1)
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 63
#: the firmware struct holds 32 bytes with the terminating NUL (CONTRACT.md §1 SetWiFiCredentials)
MAX_SSID_BYTES = 31
#: an OTA password: ArduinoOTA keeps only its hash, so its core sets no limit; 64 bytes is more than any
#: lab types, and keeps a D-Bus caller from storing megabytes
MAX_OTA_PASSWORD_BYTES = 64


def check_ssid(ssid: str, *, key: str = "wifi.ssid") -> str:
    """:raises ConfigError: empty, longer than 31 bytes in UTF-8, or with control characters"""
    size = len(ssid.encode())
    if not 1 <= size <= MAX_SSID_BYTES:
        raise ConfigError(key, f"must be 1 to {MAX_SSID_BYTES} bytes, not {size}")
    if _has_control_characters(ssid):
        raise ConfigError(key, "must not contain control characters")
    return ssid


def check_password(password: str) -> str:
    """:raises ConfigError: not empty and not 8..63 bytes (the message never contains the password)"""
    size = len(password.encode())
    if size and not MIN_PASSWORD_BYTES <= size <= MAX_PASSWORD_BYTES:
        raise ConfigError(
            "wifi.password", f"must be empty or {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes"
        )
    return password


def check_ota_password(password: str) -> str:
    """:raises ConfigError: longer than 64 bytes, or with control characters (never quoting it)"""
    if len(password.encode("utf-8", "surrogatepass")) > MAX_OTA_PASSWORD_BYTES:
        raise ConfigError("ota.password", f"must be empty or 1 to {MAX_OTA_PASSWORD_BYTES} bytes")
    if _has_control_characters(password):
        raise ConfigError("ota.password", "must not contain control characters")
    return password


def _has_control_characters(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def read_password(state_dir: Path) -> str:
    """The stored WiFi password; "" when none is stored."""
    return read_secret(state_dir, PASSWORD_FILE)


def write_password(state_dir: Path, password: str) -> None:
    """Store the WiFi ``password`` (already checked); "" is kept as an empty file: an open network."""
    write_secret(state_dir, PASSWORD_FILE, password)


def read_ota_password(state_dir: Path) -> str:
    """The stored OTA password; "" when none is stored."""
    return read_secret(state_dir, OTA_PASSWORD_FILE)


def write_ota_password(state_dir: Path, password: str) -> None:
    """Store the OTA ``password`` (already checked); "" removes the file: the boards ask for none."""
    if password:
        write_secret(state_dir, OTA_PASSWORD_FILE, password)
    else:
        (state_dir / OTA_PASSWORD_FILE).unlink(missing_ok=True)


def read_secret(state_dir: Path, name: str) -> str:
    """The secret in file ``name`` of ``state_dir``; "" when there is no such file."""
    try:
        return (state_dir / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def write_secret(state_dir: Path, name: str, value: str) -> None:
    """Store ``value`` in file ``name`` of ``state_dir``: mode 0600 from its creation, atomically."""
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = state_dir / name
    temporary = path.with_name(f".{name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as sink:
        sink.write(value)
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(path)

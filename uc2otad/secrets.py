"""The one place secrets live: the WiFi password, in a 0600 file in the state directory; and the checks
of the WiFi credentials the firmware can carry (SSID and password), used by the settings and the engine.

The password is sent to a slave over CAN for the WiFi method, so the daemon must keep it; it is never
logged, never returned over D-Bus, never put in argv or in the SQLite database. The file is created
with mode 0600 from the start (``os.open`` with the mode, not a chmod afterwards), written to a
temporary name and renamed, so it is never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
from pathlib import Path

from uc2otad.errors import ConfigError

PASSWORD_FILE = "wifi-password"
#: WPA2 passphrases are 8..63 characters; empty means an open network (CONTRACT.md §1)
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 63
#: the firmware struct holds 32 bytes with the terminating NUL (CONTRACT.md §1 SetWiFiCredentials)
MAX_SSID_BYTES = 31


def check_ssid(ssid: str, *, key: str = "wifi.ssid") -> str:
    """:raises ConfigError: empty, longer than 31 bytes in UTF-8, or with control characters"""
    size = len(ssid.encode())
    if not 1 <= size <= MAX_SSID_BYTES:
        raise ConfigError(key, f"must be 1 to {MAX_SSID_BYTES} bytes, not {size}")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in ssid):
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


def read_password(state_dir: Path) -> str:
    """The stored WiFi password; "" when none is stored."""
    try:
        return (state_dir / PASSWORD_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def write_password(state_dir: Path, password: str) -> None:
    """Store ``password`` (already checked) in a 0600 file, atomically."""
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = state_dir / PASSWORD_FILE
    temporary = path.with_name(f".{PASSWORD_FILE}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as sink:
        sink.write(password)
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(path)

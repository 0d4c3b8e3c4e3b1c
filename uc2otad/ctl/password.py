"""Passwords for uc2otactl (the WiFi password, the OTA password): never from argv (other users see it
in ``ps``), never echoed."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

#: the prompts: each names the password it asks for, so that nobody types the WiFi one for the OTA one
WIFI_PROMPT = "WiFi password (empty for an open network): "
OTA_PROMPT = "OTA password (empty to clear it): "


def read_password(password_file: Path | None, *, prompt: str = WIFI_PROMPT) -> str:
    """From ``--password-file``, else a prompt on a terminal, else one line of standard input.

    :raises OSError: ``password_file`` cannot be read
    """
    if password_file is not None:
        text = password_file.read_text(encoding="utf-8")
        return text[:-1] if text.endswith("\n") else text
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")

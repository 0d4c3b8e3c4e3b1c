"""The WiFi password for uc2otactl: never from argv (other users see it in ``ps``), never echoed."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path


def read_password(password_file: Path | None) -> str:
    """From ``--password-file``, else a prompt on a terminal, else one line of standard input.

    :raises OSError: ``password_file`` cannot be read
    """
    if password_file is not None:
        text = password_file.read_text(encoding="utf-8")
        return text[:-1] if text.endswith("\n") else text
    if sys.stdin.isatty():
        return getpass.getpass("WiFi password (empty for an open network): ")
    return sys.stdin.readline().rstrip("\n")

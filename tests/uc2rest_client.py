"""UC2-REST, the openUC2 host library, as a peer of the virtual microscope in tests.

It may be skipped only where it cannot be installed (PyPI unreachable, outside CI); in CI it must run.
UC2-REST pulses DTR/RTS to reset a board unless the port is a native-USB ESP32-S3 ("USB JTAG/serial
debug unit"). A pty has no modem lines (the ioctl fails with ENOTTY), so tests present the port as one
of those, which takes UC2-REST's own no-reset path; everything after that is unchanged.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest
from serial.tools.list_ports_common import ListPortInfo

NO_RESET_DESCRIPTION = "USB JTAG/serial debug unit"


def uc2rest() -> ModuleType:
    """The ``uc2rest`` module; skips the test where it is not installed (fails it in CI)."""
    try:
        return importlib.import_module("uc2rest")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("uc2-rest is not installed: CI must install the test extras")
        pytest.skip("uc2-rest is not installed (PyPI unreachable?)")


def connect(module: ModuleType, device: str, baud: int = 921600) -> Any:
    """A connected ``UC2Client`` on ``device`` that accepts only a master (blocking: run it in a thread)."""
    port = ListPortInfo(device)
    port.description = NO_RESET_DESCRIPTION
    return module.UC2Client(serialport=port, baudrate=baud, requireMaster=True)

"""esptool 4.7 (Debian 13's) from PyPI in virtual environments of its own, for the daemon to run.

Two builds, kept in pytest's cache folder (``.pytest_cache/d/esptool-4.7.0``) and reused by later runs:
``pypi`` as PyPI ships it, and ``debian`` with the flasher stub files removed, as Debian's package ships
it (espressif/esptool#1159). Each is made with the test Python's ``venv`` and pip (``pip --python``),
so pip's own download cache keeps a rebuild quick; PyPI must be reachable the first time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VERSION = "4.7.0"
#: seconds building one environment may take (a first download of esptool and its dependencies)
BUILD_TIMEOUT = 300
_READY = "ready"


def esptool4(cache: pytest.Cache, flavour: str) -> Path:
    """The ``esptool.py`` program of the ``flavour`` build ("pypi" or "debian"), built if missing.

    Locally a build that fails (no network) skips the test; in CI it fails it.
    """
    folder = cache.mkdir(f"esptool-{VERSION}") / flavour
    program = folder / "bin" / "esptool.py"
    if not (folder / _READY).exists():
        try:
            _build(folder, stubs=flavour == "pypi")
        except (OSError, subprocess.SubprocessError) as err:
            message = f"cannot build esptool {VERSION} ({flavour}) in {folder}: {err}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return program


def _build(folder: Path, *, stubs: bool) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install", "--quiet",
         "--disable-pip-version-check", f"esptool=={VERSION}"],
        check=True, timeout=BUILD_TIMEOUT, capture_output=True,
    )  # fmt: skip
    if not stubs:
        for stub in stub_files(folder):
            stub.unlink()
    (folder / _READY).touch()


def stub_files(folder: Path) -> list[Path]:
    """The flasher stub files of the esptool installed in the environment ``folder``."""
    return sorted(folder.glob("lib/python3*/site-packages/esptool/targets/stub_flasher/*.json"))

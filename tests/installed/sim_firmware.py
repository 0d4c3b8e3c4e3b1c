"""Write a firmware folder for the virtual microscope: one newer image per board, and its manifest.

Run with the repository's Python (``.venv/bin/python tests/installed/sim_firmware.py FOLDER ID…``): the
image builder belongs to the simulator, which the Debian package does not ship, while the checker of
the installed package runs with ``/usr/bin/python3``. Custom names (``id_<CANID>_….bin``) make each
board's image independent of what the virtual board reports.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from uc2otad.firmware.manifest import MANIFEST_NAME
from uc2otad.sim.app_image import build_app_image

#: the version offered; the virtual boards start on the simulator's default, which is older
VERSION = "v2099.1.0"
#: small: the check is about who may start an update, not about transfer speed
IMAGE_SIZE = 16 * 1024


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, object]] = {}
    for can_id in (int(text) for text in argv[1:]):
        name = f"id_{can_id}_installed_check.bin"
        image = build_app_image(version=VERSION, size=IMAGE_SIZE, seed=name)
        (folder / name).write_bytes(image)
        files[name] = {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}
    (folder / MANIFEST_NAME).write_text(json.dumps({"version": VERSION, "files": files}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

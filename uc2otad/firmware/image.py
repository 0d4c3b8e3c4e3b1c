"""``python -m uc2otad.firmware.image FILE [--chip C] [--app]``: print what an ESP image file is, as JSON.

The command line over the parser in ``esp_image.py``: it reads a file (bounded), prints the image's
facts, and exits 1 when a check fails, so a person can ask the question the updater asks before it sends
an image.

Main constraint: the command line and its JSON are documented in docs/firmware.md; they do not change
with the parser's inner layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from uc2otad.cli import EX_NOINPUT, UsageErrorParser
from uc2otad.errors import ConfigError, ImageError
from uc2otad.firmware.chips import normalize_chip_name
from uc2otad.firmware.esp_image import OTA_PARTITION_SIZE, parse_image, require_app, require_chip

#: the largest flash a header can describe (spi_size 7 = 128MB); the CLI reads no more than this
MAX_FILE_SIZE = 128 * 1024 * 1024


def _chip_arg(value: str) -> str:
    try:
        return normalize_chip_name(value)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _size_arg(value: str) -> int:
    try:
        size = int(value, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a size: {value!r}") from err
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {value!r}")
    return size


def _build_parser() -> UsageErrorParser:
    parser = UsageErrorParser(
        prog="python -m uc2otad.firmware.image",
        description="Print what an ESP firmware image is, as JSON; exit 1 when it is not valid.",
    )
    parser.add_argument("file", help="image file (.bin)")
    parser.add_argument(
        "--chip", type=_chip_arg, help="fail unless the image is for this chip (esp32s3, ...)"
    )
    parser.add_argument("--app", action="store_true", help="fail unless it is an app image fit for OTA")
    parser.add_argument(
        "--max-size",
        type=_size_arg,
        default=OTA_PARTITION_SIZE,
        help=f"OTA partition size for --app (default 0x{OTA_PARTITION_SIZE:x})",
    )
    return parser


def _read_file(path: str) -> bytes:
    """Read at most MAX_FILE_SIZE + 1 bytes, so an endless or huge file cannot exhaust memory."""
    with open(path, "rb") as file:
        return file.read(MAX_FILE_SIZE + 1)


def _check(data: bytes, *, chip: str | None, app: bool, max_size: int, name: str) -> dict[str, Any]:
    """The CLI's report: facts when the image parses, plus ``error`` when a check failed."""
    report: dict[str, Any] = {"file": name, "valid": False}
    if len(data) > MAX_FILE_SIZE:
        report["error"] = f"file larger than the largest flash: size>{MAX_FILE_SIZE}"
        return report
    try:
        info = parse_image(data, name=name)
    except ImageError as err:
        report |= {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "error": str(err)}
        return report
    report |= info.as_dict()
    try:
        if app:
            require_app(info, board_chip=chip, max_size=max_size, name=name)
        elif chip is not None:
            require_chip(info, chip, name)
    except ImageError as err:
        report["error"] = str(err)
        return report
    report["valid"] = True
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    :returns: 0 for a valid image, 1 for an invalid one, 64 (EX_USAGE) for a bad command line,
        66 (EX_NOINPUT) for a file that cannot be read
    """
    args = _build_parser().parse_args(argv)
    try:
        data = _read_file(args.file)
    except OSError as err:
        print(json.dumps({"file": args.file, "valid": False, "error": str(err)}, indent=2))
        print(f"error: {err}", file=sys.stderr)
        return EX_NOINPUT
    report = _check(data, chip=args.chip, app=args.app, max_size=args.max_size, name=args.file)
    print(json.dumps(report, indent=2))
    if not report["valid"]:
        print(f"error: {report['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

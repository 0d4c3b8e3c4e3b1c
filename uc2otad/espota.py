"""``python -m uc2otad.espota``: upload an image to a board's ArduinoOTA service from the command line.

A thin layer over :class:`uc2otad.methods.arduino_ota.ArduinoOtaUploader` with the command line of
``CONTRACT.md`` §5. Unlike espota.py (0 or 1 only) the exit code says what went wrong, as the procedure
document's result codes: 0 success, 1 connection failed (no answer, refused, password refused, no
call-back, board closed the connection; also an image that cannot be sent), 2 upload timeout (no
progress within the chunk timeout), 3 verification failed (the board reports an MD5 or flash error),
64 usage error (EX_USAGE; argparse's own 2 would read as "timeout").

Main constraint: the OTA password is read from a file only (``--password-file``), never taken from
argv, where every user of the machine could read it in ``ps``; it is never printed or logged.
Progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from pathlib import Path
from typing import TextIO

from uc2otad.cli import UsageErrorParser
from uc2otad.errors import (
    ImageError,
    UploadError,
    UploadTimeoutError,
    UploadVerificationError,
)
from uc2otad.methods.arduino_ota import ARDUINO_OTA_PORT, ArduinoOtaUploader, UploadSettings
from uc2otad.methods.arduino_ota.uploader import CHUNK_TIMEOUT, INVITE_TIMEOUT

#: exit codes: the procedure document's espota result codes (and EX_USAGE for the command line)
EXIT_OK = 0
EXIT_CONNECTION_FAILED = 1
EXIT_UPLOAD_TIMEOUT = 2
EXIT_VERIFICATION_FAILED = 3

#: nothing the CLI reads may be larger than this: a password file is a few bytes, an image a few MB
_MAX_FILE_SIZE = 64 * 1024 * 1024


class _ProgressBar:
    """espota-style progress on stderr: a bar redrawn in place on a terminal, else a line per 10 %."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()

    def __call__(self, percent: int) -> None:
        if self._tty:
            bar = "=" * (percent // 2)
            end = "\n" if percent == 100 else ""
            self._stream.write(f"\rUploading: [{bar:<50}] {percent}%{end}")
        elif percent % 10 == 0:
            self._stream.write(f"Uploading: {percent}%\n")
        self._stream.flush()


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from err
    if not 1 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from err
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return seconds


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {value!r}") from err


def _build_parser() -> UsageErrorParser:
    parser = UsageErrorParser(
        prog="python -m uc2otad.espota",
        # "--password x" must not pass as an abbreviation of --password-file
        allow_abbrev=False,
        description="Upload a firmware image to an ESP32 over ArduinoOTA (espota protocol), streaming.",
        epilog="exit status: 0 success, 1 connection failed, 2 upload timeout, 3 verification failed, "
        "64 usage error",
    )
    parser.add_argument("-i", "--ip", required=True, metavar="HOST", help="the board's address or host name")
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        default=ARDUINO_OTA_PORT,
        help=f"the board's OTA port ({ARDUINO_OTA_PORT})",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="F",
        help="read the OTA password from this file (one trailing newline is ignored)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_seconds,
        default=INVITE_TIMEOUT,
        metavar="INVITE_TIMEOUT_S",
        help=f"seconds to wait for the answer to each invitation ({INVITE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--chunk-timeout",
        type=_seconds,
        default=CHUNK_TIMEOUT,
        metavar="S",
        help=f"fail with 2 when nothing moves for this long ({CHUNK_TIMEOUT:g})",
    )
    parser.add_argument(
        "--host-ip",
        type=_ipv4,
        default=None,
        metavar="IP",
        help="listen on, and invite from, this address (default: all)",
    )
    parser.add_argument(
        "--host-port",
        type=_port,
        default=0,
        metavar="N",
        help="TCP port the board connects back to (default: random); set one to open it in a firewall",
    )
    parser.add_argument("file", metavar="FILE", help="the image (.bin)")
    return parser


def _read_file(parser: UsageErrorParser, path: Path, what: str) -> bytes:
    """The bytes of ``path``; a file that cannot be read is a usage error (exit 64)."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_SIZE + 1)
    except OSError as err:
        parser.error(f"cannot read the {what} {str(path)!r}: {err.strerror}")
    if len(data) > _MAX_FILE_SIZE:
        parser.error(f"the {what} is larger than {_MAX_FILE_SIZE} bytes")
    return data


def _read_password(parser: UsageErrorParser, path: Path) -> str:
    """The password in ``path`` without one trailing newline (``\\n`` or ``\\r\\n``); never echoed."""
    try:
        text = _read_file(parser, path, "password file").decode("utf-8")
    except UnicodeDecodeError:
        parser.error("the password file is not UTF-8 text")
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    if not text:
        parser.error("the password file is empty")
    return text


def _exit_code(err: UploadError | ImageError) -> int:
    if isinstance(err, UploadTimeoutError):
        return EXIT_UPLOAD_TIMEOUT
    if isinstance(err, UploadVerificationError):
        return EXIT_VERIFICATION_FAILED
    # UploadConnectionError (a refused password too), and an image that cannot be sent at all
    return EXIT_CONNECTION_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    password = None if args.password_file is None else _read_password(parser, args.password_file)
    image = _read_file(parser, Path(args.file), "image")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    settings = UploadSettings(
        invite_timeout=args.timeout,
        chunk_timeout=args.chunk_timeout,
        host_ip=args.host_ip or "",  # "" = all addresses; a string default would go through _ipv4
        host_port=args.host_port,
    )
    uploader = ArduinoOtaUploader(args.ip, port=args.port, password=password, settings=settings)
    try:
        result = asyncio.run(uploader.upload(image, filename=args.file, progress=_ProgressBar(sys.stderr)))
    except (UploadError, ImageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return _exit_code(err)
    print(
        f"OK: {result.size} bytes in {result.seconds:.1f} s ({result.bytes_per_second / 1024:.0f} KiB/s)",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``uc2otad-sim``: run the virtual microscope until SIGTERM or SIGINT (``CONTRACT.md`` §5).

Prints exactly one JSON line on stdout once everything is ready — where the serial port is, the
firmware server, the nodes — and logs on stderr. On SIGTERM/SIGINT it stops and removes what it
created (pty, symlink, private folder, sockets) and exits 0. A bad configuration exits 2 with a
message naming the key; a failure to start exits 1.

``--password`` sets the virtual WiFi's password, as the contract specifies for the simulator; the
default ``uc2-lab-pass`` is documented and not secret. It is never logged or printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from uc2otad.errors import ConfigError
from uc2otad.sim import replay
from uc2otad.sim.config import SimConfig, load_config, parse_node_ids, with_node_ids
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.profiles import Profile

_LOGGER = logging.getLogger("uc2otad.sim")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uc2otad-sim",
        description="Run a virtual openUC2 microscope: a master CAN HAT on a pty with CAN nodes behind it.",
    )
    parser.add_argument("--config", type=Path, help="TOML file describing the microscope")
    parser.add_argument("--nodes", help="CAN ids of the slave boards, e.g. 10,11,20 (default 10-13,20,30,40)")
    parser.add_argument("--firmware-dir", type=Path, help="serve this folder as the firmware server")
    parser.add_argument("--ssid", help="SSID of the virtual WiFi (default uc2-lab)")
    parser.add_argument("--password", help="password of the virtual WiFi (default uc2-lab-pass, not secret)")
    parser.add_argument(
        "--profile",
        choices=[profile.value for profile in Profile],
        help="firmware generation of the master and of every node without its own (default fw-2026-09)",
    )
    parser.add_argument("--baud", type=int, help="the master's baud rate (921600; 115200 for old HATs)")
    parser.add_argument(
        "--serial-link", type=Path, help="stable symlink to the pty (default: private folder)"
    )
    parser.add_argument("--quiet-master", action="store_true", help="no debug log lines between answers")
    parser.add_argument(
        "--paced-can", action="store_true", help="CAN frames take their time on the wire ([can] bitrate)"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="stderr log level")
    parser.add_argument(
        "--replay", type=Path, metavar="FILE", help="answer from a capture of a real master (replay.py)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The file's configuration with the command line's explicit values on top.

    :raises ConfigError: a bad file or value, naming the key
    """
    config = load_config(args.config)
    if args.nodes is not None:
        config = with_node_ids(config, parse_node_ids(args.nodes))
    overrides = {
        "firmware_dir": args.firmware_dir,
        "ssid": args.ssid,
        "password": args.password,
        "profile": Profile(args.profile) if args.profile else None,
        "baud": args.baud,
        "serial_link": args.serial_link,
        "log_noise": False if args.quiet_master else None,
        "can": replace(config.can, paced=True) if args.paced_can else None,
    }
    config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    if config.firmware_dir is not None and not config.firmware_dir.is_dir():
        raise ConfigError("firmware_dir", f"{config.firmware_dir} is not a folder")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.replay is not None:  # only --serial-link and --baud apply: the recording is the microscope
        try:
            return asyncio.run(replay.serve(args.replay, serial_link=args.serial_link, baud=args.baud))
        except replay.RecordingError as err:
            print(f"uc2otad-sim: {err}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"uc2otad-sim: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_serve(config))


async def _serve(config: SimConfig) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    microscope = VirtualMicroscope(config)
    try:
        await microscope.start()
    except OSError as err:
        _LOGGER.error("cannot start the virtual microscope: %s", err)
        return EXIT_FAILED
    try:
        # the one line a caller waits for; a short write to a pipe, once
        print(json.dumps(microscope.ready_info()), flush=True)
        await stopping.wait()
        _LOGGER.info("stopping")
    finally:
        await microscope.stop()
    return EXIT_OK

"""The two-command start: a whole uc2otad setup on a laptop, with no microscope, then every board updated.

``python -m uc2otad.demo`` (``scripts/demo`` sets up the machine first) starts, each in a private work
folder: a D-Bus daemon of its own (session-type, its own address: nothing touches the user's buses),
the virtual microscope (``uc2otad-sim``: master CAN HAT + motors 10-13, laser 20, LED 30, galvo 40), a
firmware folder with newer images for those boards, served by the simulator, and ``uc2otad`` on that
bus. Then it runs ``uc2otactl scan`` and ``uc2otactl update --all`` as a person would, and stops
everything it started. ``--keep-running`` leaves the setup up for a person to try other commands;
``--capture FILE`` has the daemon record the master link to FILE (for ``uc2otad-sim --replay``).

Main constraint: nothing may be left behind, whatever happens (a failed step, Ctrl-C, SIGTERM): every
program runs in its own session (a Ctrl-C on the terminal reaches only uc2otactl, which cancels) and is
stopped by the demo in order — daemon, microscope, bus — before the work folder is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.manifest import MANIFEST_NAME
from uc2otad.sim.app_image import build_app_image
from uc2otad.sim.nodes import DEFAULT_NODE_IDS, DEFAULT_VERSION
from uc2otad.sim.private_bus import PrivateBus, PrivateBusError, stop_process
from uc2otad.sim.profiles import Profile, rodata_for

#: the version the demo's firmware folder offers; the virtual boards start on DEFAULT_VERSION
NEW_VERSION = "v2026.2.0"
NEW_BUILD_DATE, NEW_BUILD_TIME = "Oct 15 2026", "12:00:00"
#: bytes per image: big enough for the progress to be seen, small enough for seven boards in seconds
IMAGE_SIZE = 48 * 1024
#: seconds a program may take to say it is ready (the simulator's JSON line, the daemon's READY=1)
START_TIMEOUT = 30.0
#: seconds between two boards of the batch (the contract's default is 2; the demo has no need to wait)
BATCH_DELAY = 0

#: the virtual microscope: the firmware's boot and reboot times shrunk, so that seven updates take
#: seconds, not minutes (every MasterTiming field is documented in uc2otad/sim/timing.py)
MICROSCOPE_TOML = """\
profile = "fw-2026-09"

[timing]
restart_delay = 0.1
node_boot_time = 0.3
ota_settle = 0.0
ota_reboot_delay = 0.3
"""
#: the daemon: verification windows shrunk to the fast boards above (defaults in uc2otad/methods/verify.py)
DAEMON_TOML = """\
[update]
verify_settle = 0.3
verify_interval = 0.2
verify_window = 15.0
retry_delay = 1.0
"""


class DemoError(Exception):
    """A step of the demo failed; the message says which and where its log is."""


class _TerminatedError(Exception):
    """SIGTERM: end the demo as Ctrl-C does."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uc2otad-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-running", action="store_true",
                        help="after the update, leave everything running until Ctrl-C")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one, removed)")
    parser.add_argument("--capture", type=Path, metavar="FILE",
                        help="record the master link to FILE, as uc2otad --capture does, for "
                             "uc2otad-sim --replay")  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stopped)
    # Ctrl-C ends the demo cleanly even when it was started with SIGINT ignored (`demo &` in a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="uc2otad-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            return _run(workdir, stack, keep_running=args.keep_running, capture=args.capture)
    except DemoError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _TerminatedError):
        print("\ndemo: stopped", file=sys.stderr)
        return 130
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, stack: ExitStack, *, keep_running: bool, capture: Path | None = None) -> int:
    bus_address = stack.enter_context(_private_bus(workdir))
    firmware = _firmware_folder(workdir / "firmware")
    (workdir / "microscope.toml").write_text(MICROSCOPE_TOML)
    microscope = stack.enter_context(_microscope(workdir, firmware))
    print(f"demo: virtual microscope on {microscope['serial_link']}, boards "
          f"{', '.join(sorted(microscope['nodes'], key=int))}, firmware {NEW_VERSION} at "
          f"{microscope['firmware_server']}", flush=True)  # fmt: skip
    stack.enter_context(_daemon(workdir, bus_address, microscope, capture))
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus_address}
    _ctl(env, "scan")
    status = _ctl(env, "update", "--all", "--delay", str(BATCH_DELAY))
    if status != 0:
        print(f"demo: uc2otactl update exited {status}; logs in {workdir}", file=sys.stderr)
        return status
    _ctl(env, "scan")
    if keep_running:
        _show_how_to_try(bus_address, workdir)
        try:
            signal.pause()
        except (KeyboardInterrupt, _TerminatedError):  # the way this mode is meant to end
            print("\ndemo: stopping", flush=True)
    return 0


# ---- the programs ------------------------------------------------------------------------------------


@contextmanager
def _private_bus(workdir: Path) -> Iterator[str]:
    """dbus-daemon on a socket in ``workdir`` (the tests' launcher); yields its address."""
    if shutil.which("dbus-daemon") is None:
        raise DemoError("dbus-daemon is not installed (scripts/bootstrap installs it)")
    bus = PrivateBus(workdir, log=workdir / "bus.log")
    try:
        address = bus.start()
    except PrivateBusError as err:
        raise DemoError(f"{err}; see {workdir / 'bus.log'}") from err
    try:
        yield address
    finally:
        bus.stop()


@contextmanager
def _microscope(workdir: Path, firmware: Path) -> Iterator[dict[str, Any]]:
    """``uc2otad-sim`` with the demo's config and firmware; yields its ready line."""
    command = [sys.executable, "-m", "uc2otad.sim", "--config", str(workdir / "microscope.toml"),
               "--firmware-dir", str(firmware), "--serial-link", str(workdir / "ttyUC2HAT"),
               "--quiet-master", "--log-level", "warning"]  # fmt: skip
    with _started(command, workdir / "microscope.log", stdout=subprocess.PIPE) as process:
        ready: dict[str, Any] = json.loads(_first_line(process, "the virtual microscope"))
        yield ready


@contextmanager
def _daemon(
    workdir: Path, bus_address: str, microscope: dict[str, Any], capture: Path | None = None
) -> Iterator[None]:
    """``uc2otad`` on the private bus, until it says READY=1 (sd_notify, as under systemd)."""
    config = workdir / "uc2otad.toml"
    config.write_text(DAEMON_TOML)
    notify_path = workdir / "notify.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus_address, "NOTIFY_SOCKET": str(notify_path)}
        command = [sys.executable, "-m", "uc2otad.daemon", "--session", "--config", str(config),
                   "--serial-port", microscope["serial_link"], "--firmware-server",
                   microscope["firmware_server"], "--state-dir", str(workdir / "state"),
                   "--cache-dir", str(workdir / "cache")]  # fmt: skip
        if capture is not None:
            command += ["--capture", str(capture)]
        with _started(command, workdir / "uc2otad.log", env=env) as process:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or process.poll() is not None:
                    raise DemoError(f"uc2otad did not start; see {workdir / 'uc2otad.log'}")
                notify.settimeout(min(remaining, 0.5))
                try:
                    if "READY=1" in notify.recv(4096).decode().split("\n"):
                        break
                except TimeoutError:
                    continue
            yield


@contextmanager
def _started(
    command: list[str], log: Path, *, stdout: int | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own session (terminal signals do not reach it); stop it when done."""
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout or log_file,
                                   stderr=log_file, env=env, start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        stop_process(process)


def _first_line(process: subprocess.Popen[bytes], what: str) -> str:
    """The first line ``process`` writes on stdout, within START_TIMEOUT."""
    stream: IO[bytes] | None = process.stdout
    if stream is None:
        raise DemoError(f"{what}: no stdout")
    readable, _, _ = select.select([stream], [], [], START_TIMEOUT)
    line = stream.readline().decode().strip() if readable else ""
    if not line:
        raise DemoError(f"{what} did not start (exit status {process.poll()})")
    return line


def _ctl(env: dict[str, str], *args: str) -> int:
    """Run uc2otactl on the demo's bus, in the foreground (its progress goes to this terminal)."""
    program = Path(sys.executable).with_name("uc2otactl")
    command = [str(program)] if program.exists() else [sys.executable, "-m", "uc2otad.ctl.main"]
    print(f"\n$ uc2otactl --session {shlex.join(args)}", flush=True)
    # Ctrl-C on the terminal reaches uc2otactl too, which cancels the update and exits: wait for it
    # instead of dying at once (a handler, not SIG_IGN, so that uc2otactl starts with the default)
    previous = signal.signal(signal.SIGINT, _note_interrupt)
    try:
        return subprocess.run([*command, "--session", *args], env=env, check=False).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- firmware and help -------------------------------------------------------------------------------


def _firmware_folder(folder: Path) -> Path:
    """The standard image for each board of the virtual microscope, at NEW_VERSION."""
    folder.mkdir(exist_ok=True)
    table = ImageTable.standard()
    files: dict[str, dict[str, Any]] = {}
    for can_id in DEFAULT_NODE_IDS:
        name = table.candidates(can_id)[0]
        image = build_app_image(version=NEW_VERSION, date=NEW_BUILD_DATE, time=NEW_BUILD_TIME,
                                size=IMAGE_SIZE, seed=name,
                                rodata=rodata_for(Profile.FW_2026_09, NEW_VERSION))  # fmt: skip
        (folder / name).write_bytes(image)
        files[name] = {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}
    # the manifest the firmware build publishes (uc2-stack.md §4.3): the daemon knows each image's
    # version before it downloads it (scan's "update available") and checks every download against it
    manifest = {"version": NEW_VERSION, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _show_how_to_try(bus_address: str, workdir: Path) -> None:
    program = Path(sys.executable).with_name("uc2otactl")
    ctl = str(program) if program.exists() else "uc2otactl"
    print(f"""
The virtual microscope and uc2otad keep running (boards start on {DEFAULT_VERSION}). In another terminal:

  export DBUS_SESSION_BUS_ADDRESS={shlex.quote(bus_address)}
  {ctl} --session status
  {ctl} --session history
  {ctl} --session update 11 --force
  {ctl} --session watch

Logs and state: {workdir}
Press Ctrl-C here to stop everything.""", flush=True)  # fmt: skip


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError


def _note_interrupt(signum: int, frame: FrameType | None) -> None:
    """While uc2otactl runs in the foreground: it handles Ctrl-C itself."""


if __name__ == "__main__":
    sys.exit(main())

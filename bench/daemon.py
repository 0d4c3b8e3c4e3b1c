"""Benchmark the idle daemon: RSS, start-to-READY, GetStatus round trip, idle wake-ups.

Run: ``.venv/bin/python bench/daemon.py [--calls 2000] [--idle 10]``. It starts a private dbus-daemon
and uc2otad exactly as the tests do (uc2otad/sim/private_bus.py, tests/daemon_process.py), measures, and
prints a Markdown table for docs/benchmarks.md. Targets (issue 17, restating issue 6's): private memory
(USS) <= 30 MiB for the daemon installed from the .deb on Debian 12 (``--program /usr/bin/uc2otad``), RSS
reported beside it; start-to-READY <= 0.3 s, GetStatus p99 <= 5 ms, no periodic wake-ups but the watchdog.

The daemon runs as it would installed: from byte-compiled modules (the Debian package compiles them at
install time). The package is compiled first, and PYTHONDONTWRITEBYTECODE, if the environment sets it,
is cleared for the daemon; without bytecode every start compiles the sources again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_process import DaemonProcess
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from processes import terminate

from uc2otad.api import names
from uc2otad.sim.private_bus import PrivateBus


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def smaps_rollup(pid: int) -> dict[str, int]:
    """KiB by field: ``Pss`` (shared pages split among their users), ``Private_Clean``/``Private_Dirty``."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {name.rstrip(":"): int(value) for name, value, *_ in (line.split() for line in lines)}


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread: each one is a wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = dict(
            line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line
        )
        total += int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
    return total


async def round_trips(address: str, calls: int) -> list[float]:
    bus = await MessageBus(bus_address=address).connect()
    message = Message(destination=names.BUS_NAME, path=names.OBJECT_PATH, interface=names.INTERFACE,
                      member="GetStatus", signature="u", body=[11])  # fmt: skip
    timings = []
    for _ in range(calls):
        start = time.perf_counter()
        await bus.call(message)
        timings.append(time.perf_counter() - start)
    bus.disconnect()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle to count wake-ups")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--with-master", action="store_true", help="connect to a virtual microscope")
    parser.add_argument("--with-can", action="store_true", help="a direct CAN link to a virtual microscope")
    parser.add_argument("--program", help="an installed uc2otad to measure, e.g. /usr/bin/uc2otad")
    args = parser.parse_args()

    bytecode = {"PYTHONDONTWRITEBYTECODE": ""}
    package = Path(__file__).resolve().parent.parent / "uc2otad"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)], check=True, env={**os.environ, **bytecode}
    )
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / "bus").mkdir()
        bus = PrivateBus(workdir / "bus")
        bus.start()
        simulator = None
        try:
            flags: tuple[str, ...] = ()
            if args.with_master or args.with_can:
                simulator = subprocess.Popen(
                    ["uc2otad-sim", "--quiet-master"], stdout=subprocess.PIPE, text=True
                )
                assert simulator.stdout is not None
                ready = json.loads(simulator.stdout.readline())
                if args.with_master:
                    flags += ("--serial-port", ready["serial_link"])
                if args.with_can:  # the direct CAN link: python-can and canopen loaded, the bus heard
                    flags += (
                        "--can-interface",
                        ready["can"]["interface"],
                        "--can-channel",
                        ready["can"]["channel"],
                    )
            ready_times = []
            program = (args.program,) if args.program else (sys.executable, "-m", "uc2otad.daemon")
            daemon = DaemonProcess(workdir, bus.address, args=flags, env=bytecode, program=program)
            for _ in range(args.starts):
                start = time.perf_counter()
                daemon.start()
                ready_times.append(time.perf_counter() - start)
                daemon.stop()
            daemon.start()
            pid = daemon.pid
            timings = asyncio.run(round_trips(bus.address, args.calls))
            rss_kib = int(proc_status(pid)["VmRSS"].split()[0])
            memory = smaps_rollup(pid)
            before = context_switches(pid)
            time.sleep(args.idle)
            wakeups = context_switches(pid) - before
            daemon.close()
        finally:
            bus.stop()
            if simulator is not None:
                terminate(simulator)

    print_table(
        args, ready_times=ready_times, timings=timings, rss_kib=rss_kib, memory=memory, wakeups=wakeups
    )
    return 0


def print_table(
    args: argparse.Namespace,
    *,
    ready_times: list[float],
    timings: list[float],
    rss_kib: int,
    memory: dict[str, int],
    wakeups: int,
) -> None:
    timings.sort()
    p50 = statistics.median(timings) * 1000
    p99 = timings[int(len(timings) * 0.99) - 1] * 1000
    private = memory["Private_Clean"] + memory["Private_Dirty"]
    print("| measure | value | target |")
    print("|---|---|---|")
    uss_pss = f"{private / 1024:.1f} / {memory['Pss'] / 1024:.1f} MiB"
    print(f"| idle private memory (USS) / PSS | {uss_pss} | USS <= 30 MiB |")
    print(f"| idle RSS after READY | {rss_kib / 1024:.1f} MiB ({rss_kib * 1024 / 1e6:.1f} MB) | reported |")
    print(
        f"| start to READY=1 (median of {args.starts}) | {statistics.median(ready_times):.3f} s | <= 0.3 s |"
    )
    print(f"| GetStatus round trip p50 / p99 ({args.calls} calls) | {p50:.2f} / {p99:.2f} ms | p99 <= 5 ms |")
    master = "a master connected" if args.with_master else "no master"
    if args.with_can:
        master += ", a direct CAN link (the simulator's nodes' heartbeats, one a second each)"
    print(f"| wake-ups in {args.idle:.0f} s idle, {master}, no watchdog | {wakeups} | 0 periodic |")


if __name__ == "__main__":
    sys.exit(main())

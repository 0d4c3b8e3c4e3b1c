"""A profiler for the daemon's process: which of our files and frames one StartOTA call crosses.

Installed by ``bench/startota_walk.py`` before ``uc2otad.daemon`` runs (see ``WRAPPER`` there), with
``sys.setprofile`` and ``threading.setprofile``, so every thread the daemon starts carries it. It records
only during the walk: it switches on when the D-Bus handler ``start_ota`` of ``uc2otad/api/interface.py``
is entered, and off when the master link first writes to its port what touches the board, the
``/ota_start`` command or a raw image chunk (``_write_in_order`` in ``uc2otad/links/base.py``, in the
link's writer thread). Our code is the files under the imported ``uc2otad`` package, ``uc2otad/sim/``
excepted.

While on, for every ``call`` event (a call, or a coroutine resumed) of a frame of ours, it records the
file, the function, the thread, and the depth of the frame: the frames of ours on its stack, itself
included (``f_back`` walked to the end; a stack ends at a thread hop or an event-loop callback, so the
depth is the deepest chain of ours *within* one task or thread). The frames that host the event loop
(``daemon.py``'s ``main`` and module, beneath ``asyncio.run``) are not the walk's and never counted; the
frames of ours between the loop and ``start_ota`` (its decorators' wrappers) are recorded when it is
entered. A frame of depth 1 was entered from outside our code (dbus_fast, the event loop's callbacks and
task steps, a thread's start): an *entry*.

The summary is written, as JSON, to the file named by ``UC2OTAD_WALK_OUT`` once the walk ends, and at
exit if it never ended (then ``touched`` is false).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

#: the environment variable with the summary's path
OUT_ENV = "UC2OTAD_WALK_OUT"
#: the event loop's files: our frames beneath them on the handler's stack host the loop, not the walk
_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep


class WalkProfiler:
    """The profile function and what it has seen; ``package_dir`` is the ``uc2otad`` package's folder."""

    def __init__(self, package_dir: str, out: Path) -> None:
        self.package_dir = package_dir
        self.out = out
        self._ours = package_dir + os.sep
        self._sim = os.path.join(package_dir, "sim") + os.sep
        self._interface = os.path.join(package_dir, "api", "interface.py")
        self._link_base = os.path.join(package_dir, "links", "base.py")
        self._lock = threading.Lock()
        self.on = False
        self.done = False
        self.touch = ""
        self.files: set[str] = set()
        self.functions: set[str] = set()
        self.entries: set[str] = set()
        self.threads: set[str] = set()
        self.max_depth = 0
        self.deepest: list[str] = []
        self.calls = 0
        #: the frames beneath the event loop when the walk began: not counted
        self._base: set[FrameType] = set()

    def install(self) -> None:
        sys.setprofile(self.profile)
        threading.setprofile(self.profile)
        atexit.register(self.write)

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or self.done:
            return
        code = frame.f_code
        if not self.on:
            if code.co_name != "start_ota" or code.co_filename != self._interface:
                return
            with self._lock:
                self.on = True
                # the frames already on the stack: down to the event loop, the handler's wrappers
                # (decorators), entered before the handler itself; beneath it, the loop's host
                # (daemon.py's main), which is not the walk's
                callers = []
                caller = frame.f_back
                while caller is not None and not caller.f_code.co_filename.startswith(_ASYNCIO):
                    callers.append(caller)
                    caller = caller.f_back
                while caller is not None:
                    self._base.add(caller)
                    caller = caller.f_back
                for outer in reversed(callers):
                    if self._is_ours(outer.f_code.co_filename):
                        self._record(outer)
        if not self._is_ours(code.co_filename):
            return
        with self._lock:
            if self.done:
                return
            self._record(frame)
            if code.co_name == "_write_in_order" and code.co_filename == self._link_base:
                touch = self._touch(frame)
                if touch:
                    self.touch = touch
                    self.done = True
        if self.done:
            self.write()

    def _is_ours(self, filename: str) -> bool:
        return filename.startswith(self._ours) and not filename.startswith(self._sim)

    def _name(self, frame: FrameType) -> str:
        code = frame.f_code
        return f"{os.path.relpath(code.co_filename, os.path.dirname(self.package_dir))}:{code.co_qualname}"

    def _record(self, frame: FrameType) -> None:
        stack = []
        current: FrameType | None = frame
        while current is not None:
            if self._is_ours(current.f_code.co_filename) and current not in self._base:
                stack.append(self._name(current))
            current = current.f_back
        name = self._name(frame)
        self.calls += 1
        self.files.add(name.partition(":")[0])
        self.functions.add(name)
        self.threads.add(threading.current_thread().name)
        if len(stack) == 1:
            self.entries.add(name)
        if len(stack) > self.max_depth:
            self.max_depth = len(stack)
            self.deepest = stack[::-1]

    @staticmethod
    def _touch(frame: FrameType) -> str:
        """What this ``_write_in_order(port, data, raw)`` writes, if it touches the board, else ``""``."""
        data = frame.f_locals.get("data", b"")
        if frame.f_locals.get("raw"):
            return f"a raw chunk of {len(data)} bytes"
        if isinstance(data, bytes) and b"/ota_start" in data:
            return data.decode(errors="replace").strip()
        return ""

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "package": self.package_dir,
                "touched": self.done,
                "touch": self.touch,
                "files": sorted(self.files),
                "file_count": len(self.files),
                "max_depth": self.max_depth,
                "deepest": self.deepest,
                "function_count": len(self.functions),
                "functions": sorted(self.functions),
                "entries": sorted(self.entries),
                "entry_count": len(self.entries),
                "threads": sorted(self.threads),
                "thread_count": len(self.threads),
                "calls": self.calls,
            }

    def write(self) -> None:
        """Write the summary once (the end of the walk, or the exit of a daemon whose walk never ended)."""
        if self.out.exists() and not self.done:
            return
        text = json.dumps(self.summary(), indent=1)
        partial = self.out.with_suffix(".part")
        partial.write_text(text)
        partial.replace(self.out)


def install() -> WalkProfiler:
    """Install the profiler on the ``uc2otad`` that ``import uc2otad`` would load now (not imported yet)."""
    spec = importlib.util.find_spec("uc2otad")
    if spec is None or spec.origin is None:
        raise RuntimeError("uc2otad is not importable")
    profiler = WalkProfiler(os.path.dirname(spec.origin), Path(os.environ[OUT_ENV]))
    profiler.install()
    return profiler

"""What virtual microscope to build: one TOML file plus the command line of ``uc2otad-sim``.

File layout (every table and key optional; unknown keys are refused, so a typo is an error, not a
default silently kept)::

    profile = "fw-2026-09" | "fw-main-2026-07" | "legacy"   (the firmware every board runs by default)
    [master]   profile = …   version = "v2026.1.0"   build = "Oct  1 2026 09:26:22"
               baud = 921600 (default: the profile's)   log_noise = true   serial_link = "/run/…"
               socket = true
               chip = "esp32" | "esp32s3"   (whose ROM loader esptool reaches; the CAN HAT's is esp32)
    [wifi]     ssid = "uc2-lab"   password = "uc2-lab-pass"   ota_port = 3232   (the slaves' ArduinoOTA)
    [can]      bitrate = 500000   paced = false   (paced: frames take their time on the wire)
               remote = true   (serve the bus to other processes: python-can interface "remote")
    [firmware] dir = "firmware"          (relative to the file)
    [timing]   restart_delay = 0.2 …     (any field of MasterTiming, seconds)
    [[nodes]]  id = 11   role = "motor"   version = "…"   build = "…"   profile = …   (default: the master's)
               mac = "…"   image = "…"   routed = true   online = true
               ota_password = "…"   (its ArduinoOTA asks for it: a lab's build; none by default)
               faults = { wifi_refused = true, drop_at_percent = 40, … }   (any field of NodeFaults)

The virtual WiFi's credentials default to SSID ``uc2-lab`` and password ``uc2-lab-pass``, documented
in ``CONTRACT.md`` §5 and not secret; the password is still never logged or printed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from uc2otad.errors import ConfigError
from uc2otad.sim.can_rate import CanRate
from uc2otad.sim.esp_chips import CHIPS
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.nodes import (
    DEFAULT_BUILD,
    DEFAULT_NODE_IDS,
    DEFAULT_VERSION,
    NodeFaults,
    NodeSpec,
    default_node,
    mac_for,
    role_for,
)
from uc2otad.sim.ota_board import ARDUINO_OTA_PORT
from uc2otad.sim.profiles import DEFAULT_PROFILE, Profile
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

T = TypeVar("T")


@dataclass(frozen=True)
class SimConfig:
    """Everything ``uc2otad-sim`` builds."""

    nodes: tuple[NodeSpec, ...] = field(default_factory=lambda: tuple(map(default_node, DEFAULT_NODE_IDS)))
    #: the firmware generation of the master and of every node without a profile of its own
    profile: Profile = DEFAULT_PROFILE
    #: the master's generation when it differs from ``profile`` (a mixed microscope)
    master_profile: Profile | None = None
    master_version: str = DEFAULT_VERSION
    master_build: str = DEFAULT_BUILD
    #: the serial rate; None: the master profile's (921600, legacy HAT builds 115200)
    baud: int | None = None
    log_noise: bool = True
    #: the stable symlink to the pty; None: one in the simulator's private temporary folder
    serial_link: Path | None = None
    #: also serve the master on ``socket://127.0.0.1:P``
    socket: bool = True
    #: the master's chip, whose ROM loader esptool reaches (the CAN HAT's CP2102 board: ESP32, §6)
    master_chip: str = "esp32"
    ssid: str = DEFAULT_SSID
    password: str = field(default=DEFAULT_PASSWORD, repr=False)
    #: the slaves' ArduinoOTA UDP port; 0 lets each bind a free one (tests running side by side)
    ota_port: int = ARDUINO_OTA_PORT
    #: the CAN-rate model: off unless ``paced``
    can: CanRate = field(default_factory=CanRate)
    #: serve the CAN bus on ``ws://127.0.0.1:P/`` for other processes (``remote_bus.py``)
    can_remote: bool = True
    #: served as the firmware server when set
    firmware_dir: Path | None = None
    timing: MasterTiming = field(default_factory=MasterTiming)


def load_config(path: Path | None) -> SimConfig:
    """The configuration in ``path``; the defaults without one.

    :raises ConfigError: unreadable file, invalid TOML, unknown key, value of the wrong type
    """
    if path is None:
        return SimConfig()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError("config", f"cannot read {path}: {err}") from err
    _only(document, "", {"profile", "master", "wifi", "firmware", "timing", "nodes", "can"})
    master_keys = {"profile", "version", "build", "baud", "log_noise", "serial_link", "socket", "chip"}
    master = _table(document, "master", master_keys)
    wifi = _table(document, "wifi", {"ssid", "password", "ota_port"})
    can = _table(document, "can", {"bitrate", "paced", "remote"})
    firmware = _table(document, "firmware", {"dir"})
    timing = _table(document, "timing", {item.name for item in fields(MasterTiming)})
    defaults = SimConfig()
    return SimConfig(
        nodes=_nodes(document.get("nodes"), defaults.nodes),
        profile=_profile(document.get("profile"), "profile") or defaults.profile,
        master_profile=_profile(master.get("profile"), "master.profile"),
        master_version=_get(master, "master.version", str, defaults.master_version),
        master_build=_get(master, "master.build", str, defaults.master_build),
        baud=_get(master, "master.baud", int, 0) or None,
        log_noise=_get(master, "master.log_noise", bool, defaults.log_noise),
        serial_link=_path(path, master.get("serial_link"), "master.serial_link"),
        socket=_get(master, "master.socket", bool, defaults.socket),
        master_chip=_chip(_get(master, "master.chip", str, defaults.master_chip)),
        ssid=_get(wifi, "wifi.ssid", str, defaults.ssid),
        password=_get(wifi, "wifi.password", str, defaults.password),
        ota_port=_get(wifi, "wifi.ota_port", int, defaults.ota_port),
        can=_can_rate(can),
        can_remote=_get(can, "can.remote", bool, defaults.can_remote),
        firmware_dir=_path(path, firmware.get("dir"), "firmware.dir"),
        timing=MasterTiming(**{key: _seconds(value, f"timing.{key}") for key, value in timing.items()}),
    )


def with_node_ids(config: SimConfig, ids: Sequence[int]) -> SimConfig:
    """``config`` with exactly the nodes ``ids``: as configured where the file names them, else defaults.

    :raises ConfigError: an id has no role
    """
    configured = {node.can_id: node for node in config.nodes}
    return replace(config, nodes=tuple(configured.get(can_id) or default_node(can_id) for can_id in ids))


def parse_node_ids(text: str) -> list[int]:
    """``"10,11,20"`` as ids.

    :raises ConfigError: not a comma-separated list of numbers, or an id twice
    """
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ConfigError("nodes", f"must be CAN ids separated by commas, not {text!r}") from err
    if len(set(ids)) != len(ids):
        raise ConfigError("nodes", f"lists an id twice: {text!r}")
    return ids


def _nodes(value: Any, default: tuple[NodeSpec, ...]) -> tuple[NodeSpec, ...]:
    if value is None:
        return default
    if not isinstance(value, list):
        raise ConfigError("nodes", "must be an array of tables ([[nodes]])")
    known = {"id", "role", "version", "build", "profile", "mac", "image", "routed", "online", "faults",
             "ota_password"}  # fmt: skip
    specs: list[NodeSpec] = []
    for number, item in enumerate(value, start=1):
        prefix = f"nodes[{number}]."
        if not isinstance(item, Mapping):
            raise ConfigError(prefix.rstrip("."), "must be a table")
        _only(item, prefix, known)
        can_id = item.get("id")
        if isinstance(can_id, bool) or not isinstance(can_id, int):
            raise ConfigError(prefix + "id", f"must be a CAN id, not {can_id!r}")
        if any(spec.can_id == can_id for spec in specs):
            raise ConfigError(prefix + "id", f"CAN id {can_id} is listed twice")
        specs.append(
            NodeSpec(
                can_id=can_id,
                role=_get(item, prefix + "role", str, "") or role_for(can_id),
                version=_get(item, prefix + "version", str, DEFAULT_VERSION),
                build=_get(item, prefix + "build", str, DEFAULT_BUILD),
                profile=_profile(item.get("profile"), prefix + "profile"),
                mac=_get(item, prefix + "mac", str, mac_for(can_id)),
                image=_get(item, prefix + "image", str, ""),
                routed=_get(item, prefix + "routed", bool, True),
                online=_get(item, prefix + "online", bool, True),
                faults=_faults(item.get("faults"), prefix + "faults"),
                ota_password=_ota_password(item.get("ota_password"), prefix + "ota_password"),
            )
        )
    return tuple(specs)


def _ota_password(value: Any, key: str) -> str | None:
    """A node's ArduinoOTA password: a non-empty string, or absent (the message never quotes it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a non-empty string")
    return value


def _faults(value: Any, key: str) -> NodeFaults:
    if value is None:
        return NodeFaults()
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table of NodeFaults fields")
    _only(value, key + ".", {item.name for item in fields(NodeFaults)})
    defaults = NodeFaults()

    def share(name: str) -> float | None:
        return _seconds(value[name], f"{key}.{name}") if name in value else None

    offset = _get(value, f"{key}.corrupt_offset", int, -1)
    return NodeFaults(
        wifi_refused=_get(value, f"{key}.wifi_refused", bool, defaults.wifi_refused),
        ota_start_fails=_get(value, f"{key}.ota_start_fails", bool, defaults.ota_start_fails),
        boots_old_image=_get(value, f"{key}.boots_old_image", bool, defaults.boots_old_image),
        drop_at_percent=share("drop_at_percent"),
        stall_at_percent=share("stall_at_percent"),
        stall_seconds=share("stall_seconds") or defaults.stall_seconds,
        corrupt_offset=offset if offset >= 0 else None,
        transfer_faults_once=_get(value, f"{key}.transfer_faults_once", bool, defaults.transfer_faults_once),
        disturbing_image=_get(value, f"{key}.disturbing_image", str, defaults.disturbing_image).lower(),
    )


def _can_rate(table: Mapping[str, Any]) -> CanRate:
    bitrate = _get(table, "can.bitrate", int, CanRate().bitrate)
    if bitrate <= 0:
        raise ConfigError("can.bitrate", f"must be a positive number of bits per second, not {bitrate}")
    return CanRate(bitrate=bitrate, paced=_get(table, "can.paced", bool, False))


def _profile(value: Any, key: str) -> Profile | None:
    if value is None:
        return None
    try:
        return Profile(value)
    except ValueError:
        raise ConfigError(key, f"must be one of {', '.join(Profile)}, not {value!r}") from None


def _chip(value: str) -> str:
    if value not in CHIPS:
        raise ConfigError("master.chip", f"must be one of {', '.join(CHIPS)}, not {value!r}")
    return value


def _table(document: Mapping[str, Any], name: str, keys: set[str]) -> Mapping[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(name, "must be a table")
    _only(table, name + ".", keys)
    return table


def _only(table: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(prefix + unknown[0], f"unknown key; known: {', '.join(sorted(keys))}")


def _get(table: Mapping[str, Any], key: str, kind: type[T], default: T) -> T:
    value = table.get(key.rsplit(".", 1)[-1], default)
    # bool is an int in Python; a number where a flag is expected (or the other way) is a mistake
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
        raise ConfigError(key, f"must be a {kind.__name__}, not {value!r}")
    return value


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(key, f"must be a number of seconds, not {value!r}")
    return float(value)


def _path(config_file: Path, value: Any, key: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a path, not {value!r}")
    return (config_file.parent / value).resolve() if not Path(value).is_absolute() else Path(value)

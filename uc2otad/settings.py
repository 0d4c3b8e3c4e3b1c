"""The daemon's settings: one config file, values set over D-Bus, command-line flags (CONTRACT.md §3).

Precedence, highest first: command-line flag > value set over D-Bus (persisted in the state directory)
> config file (``/etc/uc2otad/uc2otad.toml``) > built-in default. Nothing else (no environment
variables, no second file) feeds in, so ``uc2otad --config F`` plus its flags says everything.

Every value is checked when it is read, and a bad one raises :class:`ConfigError` naming its key
(``firmware.server``), which ``uc2otad`` turns into exit 2. The WiFi password is not a setting: it
lives only in a 0600 file in the state directory (:mod:`uc2otad.secrets`).

This module only reads and checks; it imports nothing from the rooms that use the values (engine,
methods, links). A value those rooms own the default of is ``None`` here until a source gives it:
"the owner's default", which lives once, as a named constant in the module that uses it. The
composition root (:mod:`uc2otad.compose`) turns these settings into each room's typed settings, and
:func:`uc2otad.compose.with_defaults` shows them with every default filled in.

Config file layout (every key optional)::

    [serial]   port = "/dev/serial/by-id/…"   baud = 921600   ownership = "exclusive" | "on-demand"
               capture = "/var/lib/uc2otad/capture.jsonl"   (every byte on the link; "" = none)
               handshake_timeout = 2.0   reconnect_max_delay = 10.0   master_rx_timeout = 30.0
    [firmware] server = "http://localhost/firmware"   cache_dir = "/var/cache/uc2otad"
               connect_timeout = 5.0   read_timeout = 10.0   transfer_timeout = 60.0   attempts = 3
               channel = "beta"   (every release; "stable": no prerelease)
               keys_dir = "/etc/uc2otad/keys"   require_signature = false   (minisign, issue 21)
    [catalog.images]  "11" = ["lab_motor_x.bin"]
    [wifi]     ssid = "uc2-lab"   ota_port = 3232   join_timeout = 45.0   invite_timeout = 10.0
               chunk_timeout = 20.0   host_ip = ""   host_port = 0
    [daemon]   state_dir = "/var/lib/uc2otad"   log_level = "info"
    [update]   retries = 2   retry_delay = 5.0   verify_settle = 4.0   verify_window = 40.0
               verify_interval = 2.0   max_bus_errors = 96   rollback_on_unhealthy = false
    [usb]      esptool = ""   esptool_timeout = 300.0   reboot_wait = 1.0   reconnect_window = 30.0
    [can]      interface = "socketcan"   channel = "can0"   bitrate = 500000   (the direct CAN link;
               no interface: none)   size_write_timeout = 20.0   sdo_timeout = 0.25
               block_timeout = 15.0   reachable_timeout = 10.0   discovery_wait = 1.5
               foreign_sdo_quiet = 2.0
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from uc2otad.errors import ConfigError
from uc2otad.firmware.cache import default_cache_dir
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.channels import CHANNELS, DEFAULT_CHANNEL, Channel
from uc2otad.firmware.server import (
    CONNECT_TIMEOUT,
    DEFAULT_SERVER_URL,
    READ_TIMEOUT,
    TRANSFER_TIMEOUT,
)
from uc2otad.firmware.signing import DEFAULT_KEYS_DIR
from uc2otad.firmware.source import normalize_source_url
from uc2otad.secrets import MAX_SSID_BYTES as MAX_SSID_BYTES  # noqa: PLC0414 - api/arguments.py reads it here
from uc2otad.secrets import check_ssid

_LOGGER = logging.getLogger(__name__)

SYSTEM_CONFIG_FILE = Path("/etc/uc2otad/uc2otad.toml")
SYSTEM_STATE_DIR = Path("/var/lib/uc2otad")
#: the D-Bus-set values, beside the SQLite database
PERSISTED_FILE = "settings.json"
LOG_LEVELS = ("debug", "info", "warning", "error")

PortOwnership = Literal["exclusive", "on-demand"]


def default_state_dir() -> Path:
    """``/var/lib/uc2otad`` for root, else ``$XDG_STATE_HOME/uc2otad`` (``~/.local/state/uc2otad``)."""
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "uc2otad"


@dataclass(frozen=True)
class Settings:
    """Every setting, resolved. Field names are the config keys with ``.`` written as ``_``.

    ``None``: no source gave the value, and the room that uses it applies its own default (the
    constant named in the comment; :mod:`uc2otad.compose` builds the room's settings).
    """

    serial_port: str = ""
    #: None: ``links.serial_hat.DEFAULT_BAUD`` (921600, current masters)
    serial_baud: int | None = None
    serial_ownership: PortOwnership = "exclusive"
    #: a JSON-lines file that records the link's traffic (uc2otad/links/capture.py); None: no capture
    serial_capture: Path | None = None
    #: seconds for the master's answer to ``/state_get`` when the port opens (per baud rate tried);
    #: None: ``links.serial_hat.HANDSHAKE_TIMEOUT``
    serial_handshake_timeout: float | None = None
    #: the longest pause between tries to (re)open the port (the first is 0.5 s, then doubling);
    #: None: ``links.reconnect.RECONNECT_POLICY.max_delay``
    serial_reconnect_max_delay: float | None = None
    #: the master's ``rx_timeout``: how long it swallows bytes as firmware after a stream stops;
    #: None: ``links.ota_stream.MASTER_RX_TIMEOUT``
    serial_master_rx_timeout: float | None = None
    firmware_server: str = DEFAULT_SERVER_URL
    firmware_cache_dir: Path = field(default_factory=default_cache_dir)
    firmware_connect_timeout: float = CONNECT_TIMEOUT
    firmware_read_timeout: float = READ_TIMEOUT
    firmware_transfer_timeout: float = TRANSFER_TIMEOUT
    #: None: ``retry.RetryPolicy.attempts``
    firmware_attempts: int | None = None
    #: "stable" never offers a prerelease; "beta" offers every release (uc2otad.firmware.channels)
    firmware_channel: Channel = DEFAULT_CHANNEL
    #: the trusted minisign public keys (``*.pub``); one there turns signature checks on (issue 21)
    firmware_keys_dir: Path = DEFAULT_KEYS_DIR
    #: refuse unsigned firmware even with no key installed
    firmware_require_signature: bool = False
    catalog_images: Mapping[str, Any] = field(default_factory=dict)
    wifi_ssid: str = ""
    #: None: ``methods.arduino_ota.uploader.ARDUINO_OTA_PORT``
    wifi_ota_port: int | None = None
    #: None: ``links.ota_wifi.WIFI_EVENT_TIMEOUT``
    wifi_join_timeout: float | None = None
    #: None: ``methods.arduino_ota.uploader.INVITE_TIMEOUT``
    wifi_invite_timeout: float | None = None
    #: None: ``methods.arduino_ota.uploader.CHUNK_TIMEOUT``
    wifi_chunk_timeout: float | None = None
    #: the address the upload listens on for the board's call-back ("" = every IPv4 address)
    wifi_host_ip: str = ""
    #: its TCP port (0 = a free one); fix it when a firewall must let the boards in
    wifi_host_port: int = 0
    daemon_state_dir: Path = field(default_factory=default_state_dir)
    daemon_log_level: str = "info"
    #: None: ``engine.jobs.RETRIES``
    update_retries: int | None = None
    #: None: ``engine.jobs.RETRY_DELAY``
    update_retry_delay: float | None = None
    #: None: ``methods.verify.SETTLE``
    update_verify_settle: float | None = None
    #: None: ``methods.verify.WINDOW``
    update_verify_window: float | None = None
    #: None: ``methods.verify.INTERVAL``
    update_verify_interval: float | None = None
    #: None: ``engine.health.MAX_BUS_ERRORS`` (an error counter at or above it refuses an update)
    update_max_bus_errors: int | None = None
    #: put a board's earlier image back when the check after its update fails (issue 20)
    update_rollback_on_unhealthy: bool = False
    #: an esptool program for flashing the master over USB; "" runs ``python -m esptool``
    usb_esptool: str = ""
    #: None: ``methods.usb.esptool.ESPTOOL_TIMEOUT``
    usb_esptool_timeout: float | None = None
    #: None: ``methods.usb.flash.REBOOT_WAIT``
    usb_reboot_wait: float | None = None
    #: None: ``methods.usb.flash.RECONNECT_WINDOW``
    usb_reconnect_window: float | None = None
    #: the python-can interface of the direct CAN link ("socketcan", "gs_usb", "pcan", "remote" …);
    #: "" = no direct link, the master CAN HAT is the only way to the bus
    can_interface: str = ""
    #: None: ``links.can_direct.DEFAULT_CHANNEL`` ("can0")
    can_channel: str | None = None
    #: None: ``links.can_direct.DEFAULT_BITRATE`` (500 kbit/s, the UC2 bus)
    can_bitrate: int | None = None
    #: None: ``links.can_direct.SIZE_WRITE_TIMEOUT`` (the slave erases before it answers)
    can_size_write_timeout: float | None = None
    #: None: ``links.can_direct.SDO_TIMEOUT``
    can_sdo_timeout: float | None = None
    #: None: ``links.can_direct.BLOCK_TIMEOUT``
    can_block_timeout: float | None = None
    #: None: ``links.can_direct.REACHABLE_TIMEOUT``
    can_reachable_timeout: float | None = None
    #: None: ``links.can_direct.DISCOVERY_WAIT``
    can_discovery_wait: float | None = None
    #: None: ``links.can_direct.FOREIGN_SDO_QUIET`` (another client's SDO requests: wait this quiet)
    can_foreign_sdo_quiet: float | None = None

    def image_table(self) -> ImageTable:
        """The standard image table with ``[catalog.images]`` applied."""
        return ImageTable.standard().with_overrides(self.catalog_images)


#: values that may be set over D-Bus and are then persisted (their config keys)
DBUS_SETTABLE = ("firmware.server", "wifi.ssid")


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, not {type(value).__name__}")
    return value


def _nonempty_text(value: object, key: str) -> str:
    text = _text(value, key)
    if not text:
        raise ConfigError(key, "must not be empty")
    return text


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, not {value!r}")
    return value


def _positive_int(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(key, f"must be a positive whole number, not {value!r}")
    return value


def _positive_float(value: object, key: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(key, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _count(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(key, f"must be a whole number >= 0, not {value!r}")
    return value


def _seconds(value: object, key: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(key, f"must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _port(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ConfigError(key, f"must be a port number 0..65535, not {value!r}")
    return value


def _positive_port(value: object, key: str) -> int:
    port = _port(value, key)
    if port == 0:
        raise ConfigError(key, "must be a port number 1..65535, not 0")
    return port


def _path(value: object, key: str) -> Path:
    path = Path(_text(value, key))
    if not path.is_absolute():
        raise ConfigError(key, f"must be an absolute path, not {value!r}")
    return path


def _optional_path(value: object, key: str) -> Path | None:
    return _path(value, key) if _text(value, key) else None


def _choice(*allowed: str) -> Callable[[object, str], str]:
    def parse(value: object, key: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return parse


def _server(value: object, key: str) -> str:
    try:
        return normalize_source_url(_text(value, key))
    except ConfigError as err:
        raise ConfigError(key, err.reason) from err


def _ssid(value: object, key: str) -> str:
    text = _text(value, key)
    return check_ssid(text, key=key) if text else text


def _images(value: object, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table of CAN id = [file names]")
    ImageTable.standard().with_overrides(value)  # raises ConfigError naming the entry
    return dict(value)


#: config key → (Settings field, parser)
_PARSERS: dict[str, tuple[str, Callable[[object, str], object]]] = {
    "serial.port": ("serial_port", _text),
    "serial.baud": ("serial_baud", _positive_int),
    "serial.ownership": ("serial_ownership", _choice("exclusive", "on-demand")),
    "serial.capture": ("serial_capture", _optional_path),
    "serial.handshake_timeout": ("serial_handshake_timeout", _positive_float),
    "serial.reconnect_max_delay": ("serial_reconnect_max_delay", _positive_float),
    "serial.master_rx_timeout": ("serial_master_rx_timeout", _positive_float),
    "firmware.server": ("firmware_server", _server),
    "firmware.cache_dir": ("firmware_cache_dir", _path),
    "firmware.connect_timeout": ("firmware_connect_timeout", _positive_float),
    "firmware.read_timeout": ("firmware_read_timeout", _positive_float),
    "firmware.transfer_timeout": ("firmware_transfer_timeout", _positive_float),
    "firmware.attempts": ("firmware_attempts", _positive_int),
    "firmware.channel": ("firmware_channel", _choice(*CHANNELS)),
    "firmware.keys_dir": ("firmware_keys_dir", _path),
    "firmware.require_signature": ("firmware_require_signature", _flag),
    "catalog.images": ("catalog_images", _images),
    "wifi.ssid": ("wifi_ssid", _ssid),
    "wifi.ota_port": ("wifi_ota_port", _positive_port),
    "wifi.join_timeout": ("wifi_join_timeout", _positive_float),
    "wifi.invite_timeout": ("wifi_invite_timeout", _positive_float),
    "wifi.chunk_timeout": ("wifi_chunk_timeout", _positive_float),
    "wifi.host_ip": ("wifi_host_ip", _text),
    "wifi.host_port": ("wifi_host_port", _port),
    "daemon.state_dir": ("daemon_state_dir", _path),
    "daemon.log_level": ("daemon_log_level", _choice(*LOG_LEVELS)),
    "update.retries": ("update_retries", _count),
    "update.retry_delay": ("update_retry_delay", _seconds),
    "update.verify_settle": ("update_verify_settle", _seconds),
    "update.verify_window": ("update_verify_window", _positive_float),
    "update.verify_interval": ("update_verify_interval", _positive_float),
    "update.max_bus_errors": ("update_max_bus_errors", _positive_int),
    "update.rollback_on_unhealthy": ("update_rollback_on_unhealthy", _flag),
    "usb.esptool": ("usb_esptool", _text),
    "usb.esptool_timeout": ("usb_esptool_timeout", _positive_float),
    "usb.reboot_wait": ("usb_reboot_wait", _seconds),
    "usb.reconnect_window": ("usb_reconnect_window", _positive_float),
    "can.interface": ("can_interface", _text),
    "can.channel": ("can_channel", _nonempty_text),
    "can.bitrate": ("can_bitrate", _positive_int),
    "can.size_write_timeout": ("can_size_write_timeout", _positive_float),
    "can.sdo_timeout": ("can_sdo_timeout", _positive_float),
    "can.block_timeout": ("can_block_timeout", _positive_float),
    "can.reachable_timeout": ("can_reachable_timeout", _seconds),
    "can.discovery_wait": ("can_discovery_wait", _seconds),
    "can.foreign_sdo_quiet": ("can_foreign_sdo_quiet", _seconds),
}


def apply(settings: Settings, values: Mapping[str, object]) -> Settings:
    """``settings`` with ``values`` (config key → raw value) checked and applied.

    :raises ConfigError: an unknown key or a bad value, naming the key
    """
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _PARSERS:
            raise ConfigError(key, "is not a setting")
        name, parse = _PARSERS[key]
        changes[name] = parse(value, key)
    return replace(settings, **changes)


def flatten(document: Mapping[str, Any]) -> dict[str, object]:
    """``{"serial": {"baud": 1}}`` → ``{"serial.baud": 1}``; ``catalog.images`` stays one table."""
    flat: dict[str, object] = {}
    for section, table in document.items():
        if not isinstance(table, Mapping):
            raise ConfigError(section, "must be a table ([section])")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key != "catalog.images" and isinstance(value, Mapping):
                raise ConfigError(key, "is not a setting")
            flat[key] = value
    return flat


def read_config_file(path: Path) -> dict[str, object]:
    """The config file's values by key; an absent file is empty.

    :raises ConfigError: unreadable or not TOML (key: the file's path)
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError(str(path), f"cannot be read: {err.strerror}") from err
    try:
        return flatten(tomllib.loads(text))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), f"is not valid TOML: {err}") from err


def read_persisted(state_dir: Path) -> dict[str, object]:
    """Values set over D-Bus earlier; a damaged file is ignored with a warning (it is re-creatable)."""
    path = state_dir / PERSISTED_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        _LOGGER.warning("settings: ignoring unreadable %s: %s", path, err)
        return {}
    if not isinstance(document, dict):
        return {}
    return {key: value for key, value in document.items() if key in DBUS_SETTABLE}


def write_persisted(state_dir: Path, values: Mapping[str, object]) -> None:
    """Persist D-Bus-set values atomically (write, fsync, rename)."""
    unknown = set(values) - set(DBUS_SETTABLE)
    if unknown:
        raise ConfigError(sorted(unknown)[0], "cannot be set over D-Bus")
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = state_dir / PERSISTED_FILE
    temporary = path.with_name(f".{PERSISTED_FILE}.tmp")
    with temporary.open("w", encoding="utf-8") as sink:
        json.dump(dict(values), sink, indent=1, sort_keys=True)
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(path)


class PersistedSettings:
    """The values set over D-Bus so far and the one way to add to them (the engine's ``SettingsWriter``)."""

    def __init__(self, state_dir: Path, values: Mapping[str, object]) -> None:
        self.state_dir = state_dir
        self.values: dict[str, object] = dict(values)

    def save(self, values: Mapping[str, object]) -> None:
        """Write the kept values with ``values`` added (blocking: the engine calls it in a thread).

        :raises ConfigError: a key that cannot be set over D-Bus
        :raises OSError: the file could not be written; the kept values stay as they were
        """
        merged = {**self.values, **values}
        write_persisted(self.state_dir, merged)
        self.values = merged


def load(config_file: Path, flags: Mapping[str, object]) -> tuple[Settings, dict[str, object]]:
    """Resolve the settings from every source, in the contract's order.

    The state directory itself may come from the file or a flag, so it is resolved first; the D-Bus
    values are read from there.

    :param flags: command-line values by config key (only the flags that were given)
    :returns: the settings and the D-Bus-set values (to be updated and written back by the daemon)
    :raises ConfigError: the first bad key or value
    """
    from_file = read_config_file(config_file)
    without_dbus = apply(apply(Settings(), from_file), flags)
    persisted = _valid_only(read_persisted(without_dbus.daemon_state_dir))
    resolved = apply(apply(apply(Settings(), from_file), persisted), flags)
    return resolved, persisted


def _valid_only(persisted: Mapping[str, object]) -> dict[str, object]:
    """The persisted values that still pass their checks; a bad one is dropped, never fatal."""
    valid: dict[str, object] = {}
    for key, value in persisted.items():
        try:
            apply(Settings(), {key: value})
        except ConfigError as err:
            _LOGGER.warning("settings: ignoring persisted value: %s", err)
            continue
        valid[key] = value
    return valid

"""Settings: precedence, checks that name the key, persistence; the WiFi password file."""

from __future__ import annotations

import json
import stat
from dataclasses import fields
from pathlib import Path

import pytest

from uc2otad import settings as settings_module
from uc2otad.errors import ConfigError
from uc2otad.secrets import check_password, read_password, write_password
from uc2otad.settings import Settings, load, write_persisted


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_every_setting_has_a_config_key() -> None:
    assert {name for name, _ in settings_module._PARSERS.values()} == {f.name for f in fields(Settings)}


def test_precedence_flag_over_dbus_over_file_over_default(tmp_path: Path, state_dir: Path) -> None:
    config = write_config(
        tmp_path / "uc2otad.toml",
        f'[daemon]\nstate_dir = "{state_dir}"\n'
        '[firmware]\nserver = "http://file.example/firmware"\nread_timeout = 2.5\n'
        '[wifi]\nssid = "from-file"\n[serial]\nbaud = 115200\n',
    )
    write_persisted(state_dir, {"firmware.server": "http://dbus.example/firmware/"})

    resolved, persisted = load(config, {"serial.baud": 921600})
    assert resolved.serial_baud == 921600  # flag beats file
    assert resolved.firmware_server == "http://dbus.example/firmware"  # D-Bus beats file
    assert resolved.wifi_ssid == "from-file"  # file beats default
    assert resolved.firmware_read_timeout == 2.5
    assert resolved.serial_ownership == "exclusive"  # default
    assert persisted == {"firmware.server": "http://dbus.example/firmware/"}

    flagged, _ = load(config, {"firmware.server": "https://flag.example/fw"})
    assert flagged.firmware_server == "https://flag.example/fw"  # flag beats D-Bus


def test_a_missing_config_file_means_defaults(tmp_path: Path) -> None:
    resolved, persisted = load(tmp_path / "absent.toml", {"daemon.state_dir": str(tmp_path / "s")})
    assert resolved.firmware_server == "http://localhost/firmware"
    assert persisted == {}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[serial]\nbaud = 0\n", "serial.baud"),
        ("[serial]\nbaud = true\n", "serial.baud"),
        ('[serial]\nownership = "shared"\n', "serial.ownership"),
        ('[firmware]\nserver = "ftp://x/firmware"\n', "firmware.server"),
        ('[firmware]\nserver = "http://user:pw@x/firmware"\n', "firmware.server"),
        ("[firmware]\nread_timeout = -1\n", "firmware.read_timeout"),
        ('[firmware]\ncache_dir = "relative/cache"\n', "firmware.cache_dir"),
        (f'[wifi]\nssid = "{"x" * 32}"\n', "wifi.ssid"),
        ('[daemon]\nlog_level = "loud"\n', "daemon.log_level"),
        ("[serial]\nspeed = 1\n", "serial.speed"),
        ('serial = "x"\n', "serial"),
        ('[catalog.images]\n"11" = ["../x.bin"]\n', "catalog.images.11"),
        ("[can]\nbitrate = 0\n", "can.bitrate"),
        ('[can]\nchannel = ""\n', "can.channel"),
        ("[can]\nsize_write_timeout = 0\n", "can.size_write_timeout"),
        ("[can]\ninterface = 1\n", "can.interface"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    config = write_config(tmp_path / "uc2otad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(config, {"daemon.state_dir": str(tmp_path)})
    assert caught.value.key == key
    assert str(caught.value).startswith(key)


def test_a_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "uc2otad.toml", "[serial\nbaud=1")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load(config, {"daemon.state_dir": str(tmp_path)})
    assert caught.value.key == str(config)


def test_a_damaged_persisted_value_is_dropped_not_fatal(tmp_path: Path, state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "settings.json").write_text(
        json.dumps({"firmware.server": "gopher://x", "wifi.ssid": "lab"})
    )
    resolved, persisted = load(tmp_path / "absent.toml", {"daemon.state_dir": str(state_dir)})
    assert resolved.firmware_server == "http://localhost/firmware"
    assert persisted == {"wifi.ssid": "lab"}


def test_only_dbus_settable_values_are_persisted(state_dir: Path) -> None:
    with pytest.raises(ConfigError):
        write_persisted(state_dir, {"serial.baud": 1})


def test_the_wifi_password_file_is_private_from_the_start(state_dir: Path) -> None:
    write_password(state_dir, "uc2-lab-pass")
    mode = (state_dir / "wifi-password").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert read_password(state_dir) == "uc2-lab-pass"
    write_password(state_dir, "")
    assert read_password(state_dir) == ""


@pytest.mark.parametrize("password", ["short77", "p" * 64])
def test_a_bad_password_is_refused_without_repeating_it(password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_password(password)
    assert password not in str(caught.value)


def test_the_direct_can_link_is_built_only_when_an_interface_is_named(tmp_path: Path) -> None:
    # imports here: the composition root loads python-can and canopen only for a configured link
    from uc2otad.compose import can_settings, engine_config, with_defaults  # noqa: PLC0415

    state = {"daemon.state_dir": str(tmp_path)}
    without, _ = load(tmp_path / "absent.toml", state)
    assert engine_config(without, {}).can_link is None
    config = write_config(
        tmp_path / "uc2otad.toml", '[can]\ninterface = "socketcan"\nsize_write_timeout = 30\n'
    )
    named, _ = load(config, {**state, "can.channel": "can1"})
    link = engine_config(named, {}).can_link
    assert link is not None and link().name == "can:socketcan:can1"  # built, not opened
    built = can_settings(named)
    assert (built.channel, built.bitrate, built.size_write_timeout) == ("can1", 500_000, 30.0)
    shown = with_defaults(named)
    assert (shown.can_channel, shown.can_bitrate, shown.can_block_timeout) == ("can1", 500_000, 15.0)

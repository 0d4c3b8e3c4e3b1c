"""The files the Debian package installs, checked from the source tree (the installed package itself is
checked by tests/installed/check_installed.py in CI).

The bus policy must decide for every method of the interface (a new method nobody classified would be
refused to everyone but root); the default config must name only real settings with their real defaults;
the unit must keep the paths and notification type the daemon relies on.
"""

from __future__ import annotations

import io
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, cast

from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from uc2otad import settings
from uc2otad.api.compat_bus import Utf8SizedStr, utf8_sized
from uc2otad.compose import with_defaults

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "dbus" / "org.openuc2.OTA1.conf"
INTERFACE = ROOT / "dbus" / "org.openuc2.OTA1.xml"
UNIT = ROOT / "systemd" / "uc2otad.service"
DEFAULT_CONFIG = ROOT / "debian" / "uc2otad.toml"
#: docs/security.md: the methods everyone may call
PUBLIC = {"GetStatus", "GetAllStatus", "GetHistory", "ListFirmware", "ScanDevices", "CheckUpdates",
          "ListSerialPorts", "GetUSBFlashStatus"}  # fmt: skip


def _contexts() -> dict[str, ET.Element]:
    root = ET.parse(POLICY).getroot()
    return {
        policy.get("context") or policy.get("user") or policy.get("group") or "": policy
        for policy in root.iter("policy")
    }


def test_everyone_may_call_only_the_reading_methods() -> None:
    default = _contexts()["default"]
    members = {
        rule.get("send_member") for rule in default if rule.get("send_interface") == "org.openuc2.OTA1"
    }
    methods = {node.get("name") for node in ET.parse(INTERFACE).iter("method")}
    assert members == PUBLIC
    assert methods > PUBLIC  # every other method of the interface is left to root and uc2ota
    assert all(rule.tag == "allow" and rule.get("send_destination") == "org.openuc2.OTA1" for rule in default)
    properties = {
        rule.get("send_member") for rule in default if rule.get("send_interface", "").endswith("Properties")
    }
    assert properties == {"Get", "GetAll"}  # never Set


def test_root_owns_the_name_and_uc2ota_may_call_everything() -> None:
    contexts = _contexts()
    assert [rule.attrib for rule in contexts["root"]] == [
        {"own": "org.openuc2.OTA1"},
        {"send_destination": "org.openuc2.OTA1"},
    ]
    assert [rule.attrib for rule in contexts["uc2ota"]] == [{"send_destination": "org.openuc2.OTA1"}]
    assert not any("own" in rule.attrib for name in ("default", "uc2ota") for rule in contexts[name])


def test_default_config_lists_every_setting_with_its_default() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert tomllib.loads(text) == {
        key: {} for key in ("serial", "firmware", "wifi", "update", "usb", "daemon", "can")
    }
    uncommented = re.sub(r"^#(?=[\w\[\"])", "", text, flags=re.MULTILINE)
    values = settings.flatten(tomllib.loads(uncommented))
    images = values.pop("catalog.images")
    assert images == {"11": ["lab_motor_x.bin"]}  # the one example that is not a default
    assert settings.apply(settings.Settings(), values) == with_defaults(settings.Settings())
    assert set(values) | {"catalog.images"} == set(settings._PARSERS)


def test_unit_matches_what_the_daemon_does() -> None:
    unit = UNIT.read_text()
    for line in ("Type=notify", "BusName=org.openuc2.OTA1", "ExecStart=/usr/bin/uc2otad --system",
                 "StateDirectory=uc2otad", "CacheDirectory=uc2otad", "ConfigurationDirectory=uc2otad",
                 "UMask=0077", "StateDirectoryMode=0700"):  # fmt: skip
        assert line in unit.splitlines()
    assert str(settings.SYSTEM_STATE_DIR) == "/var/lib/uc2otad"
    assert str(settings.SYSTEM_CONFIG_FILE) == "/etc/uc2otad/uc2otad.toml"


def test_utf8_sized_strings_marshal_to_the_same_values() -> None:
    status = {
        "message": Variant("s", "✅ Firmware uploaded successfully"),
        "ssid": Variant("s", "Labor-WLAN ä"),
    }
    body = utf8_sized([11, status, "ascii"])
    assert isinstance(body[1]["message"].value, Utf8SizedStr)
    assert len(body[1]["message"].value) == len("✅ Firmware uploaded successfully".encode())
    assert type(body[2]) is str  # ASCII strings stay plain
    message = Message(path="/", interface="a.b", member="c", signature="ua{sv}s", body=body)
    unmarshaller = Unmarshaller(cast(Any, io.BytesIO(bytes(message._marshall(False)))))
    unmarshaller.unmarshall()
    assert unmarshaller.message is not None
    assert unmarshaller.message.body == [11, status, "ascii"]

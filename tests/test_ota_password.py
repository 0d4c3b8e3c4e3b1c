"""The OTA password's pieces without a daemon (issue 20): its file, its checks, the prompt, the simulator's
``[[nodes]] ota_password``."""

from __future__ import annotations

import getpass as getpass_module
import os
import stat
import sys
from pathlib import Path

import pytest

from uc2otad import secrets
from uc2otad.ctl import password as ctl_password
from uc2otad.errors import ConfigError
from uc2otad.sim.config import load_config
from uc2otad.sim.nodes import default_node

OTA_PASSWORD = "lab-OTA-Passw0rd"


def test_the_file_is_0600_from_its_creation_and_clearing_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_open = os.open

    def watched_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        modes.append(mode)  # the mode it is created with: never wider, then narrowed by a chmod
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", watched_open)
    secrets.write_ota_password(tmp_path, OTA_PASSWORD)
    path = tmp_path / secrets.OTA_PASSWORD_FILE
    assert modes == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.read_ota_password(tmp_path) == OTA_PASSWORD
    assert [p.name for p in tmp_path.iterdir()] == ["ota-password"]  # no temporary left behind

    secrets.write_ota_password(tmp_path, "")
    assert not path.exists() and secrets.read_ota_password(tmp_path) == ""
    secrets.write_ota_password(tmp_path, "")  # clearing what is not there is fine too


def test_the_wifi_password_shares_the_implementation(tmp_path: Path) -> None:
    secrets.write_password(tmp_path, "uc2-lab-pass")
    secrets.write_ota_password(tmp_path, OTA_PASSWORD)
    assert secrets.read_password(tmp_path) == "uc2-lab-pass"
    assert secrets.read_ota_password(tmp_path) == OTA_PASSWORD
    for name in ("wifi-password", "ota-password"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


@pytest.mark.parametrize("password", ["p" * 65, "ü" * 33, "pass\nword", "pass\x7fword"])
def test_a_bad_ota_password_is_refused_without_repeating_it(password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        secrets.check_ota_password(password)
    assert password not in str(caught.value) and caught.value.key == "ota.password"


@pytest.mark.parametrize("password", ["", "x", "p" * 64, "ü" * 32, "with spaces and ☃"])
def test_empty_or_1_to_64_bytes_are_accepted(password: str) -> None:
    assert secrets.check_ota_password(password) == password


def test_the_prompt_names_the_ota_password(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def getpass(prompt: str) -> str:
        asked.append(prompt)
        return OTA_PASSWORD

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass_module, "getpass", getpass)
    assert ctl_password.read_password(None, prompt=ctl_password.OTA_PROMPT) == OTA_PASSWORD
    assert "OTA password" in asked[0] and "WiFi" not in asked[0]


def test_a_simulated_node_takes_an_ota_password_from_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "sim.toml"
    config_file.write_text(
        f'profile = "legacy"\n[[nodes]]\nid = 11\nota_password = "{OTA_PASSWORD}"\n[[nodes]]\nid = 12\n'
    )
    protected, open_board = load_config(config_file).nodes
    assert (protected.ota_password, open_board.ota_password) == (OTA_PASSWORD, None)
    assert OTA_PASSWORD not in repr(protected)
    assert default_node(13).ota_password is None
    config_file.write_text('[[nodes]]\nid = 11\nota_password = ""\n')
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.ota_password"):
        load_config(config_file)

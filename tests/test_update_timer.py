"""Scheduled updates: systemd/uc2otad-update.service and .timer, checked from the source tree (the
installed units are verified again by tests/installed/run, with the package's paths and man pages).

The timer fires on Sundays at 03:00 (a drop-in changes it), the service runs the command the docs
name, which uc2otactl parses as ``update --all --json`` on the system bus, as a system user in the
group the bus policy lets start updates, with "nothing due" (exit 2) not a failure. Both units pass
``systemd-analyze verify``: on copies whose ExecStart points at the uc2otactl next to this interpreter
(the unit's /usr/bin/uc2otactl exists only where the package is installed; verify wants the program)
and with ``--man=no`` (the man page is the package's too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import _require_program

from uc2otad.ctl.client import EXIT_NOTHING_TO_DO
from uc2otad.ctl.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "systemd" / "uc2otad-update.service"
TIMER = ROOT / "systemd" / "uc2otad-update.timer"
POLICY = ROOT / "dbus" / "org.openuc2.OTA1.conf"
SYSUSERS = ROOT / "debian" / "uc2otad.sysusers"
RULES = ROOT / "debian" / "rules"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
#: what the service runs, and docs/deployment.md names
COMMAND = "/usr/bin/uc2otactl update --all --json"
ON_CALENDAR = "Sun *-*-* 03:00:00"


def _entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of each assignment, in order (a key may repeat, as systemd allows)."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(path: Path, section: str, key: str) -> list[str]:
    return [value for sect, name, value in _entries(path) if (sect, name) == (section, key)]


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    _require_program("systemd-analyze")
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )


def test_service_runs_the_documented_command() -> None:
    assert _values(SERVICE, "Service", "ExecStart") == [COMMAND]
    assert f"`{COMMAND.removeprefix('/usr/bin/')}`" in DEPLOYMENT.read_text()
    args = build_parser().parse_args(COMMAND.split()[1:])
    assert (args.command, args.all, args.can_ids, args.json) == ("update", True, [], True)
    assert not hasattr(args, "bus")  # the default: the system bus, where the packaged daemon is
    assert not (args.no_wait or args.force or args.method or args.ssid)


def test_service_is_a_oneshot_for_which_nothing_due_is_success() -> None:
    assert _values(SERVICE, "Service", "Type") == ["oneshot"]
    assert _values(SERVICE, "Service", "SuccessExitStatus") == [str(EXIT_NOTHING_TO_DO)]
    assert not [entry for entry in _entries(SERVICE) if entry[0] == "Install"]  # started by the timer only
    # the daemon is started first if it is not running; Wants, so that its restart leaves a run alone
    assert "uc2otad.service" in " ".join(_values(SERVICE, "Unit", "Wants"))
    assert "uc2otad.service" in " ".join(_values(SERVICE, "Unit", "After"))
    assert not _values(SERVICE, "Unit", "Requires")


def test_service_runs_as_a_user_the_bus_policy_lets_start_updates() -> None:
    (user,) = _values(SERVICE, "Service", "User")
    (group,) = _values(SERVICE, "Service", "SupplementaryGroups")
    assert _values(SERVICE, "Service", "Group") == [user]
    assert not _values(SERVICE, "Service", "DynamicUser")  # dbus-daemon must find it in passwd and group
    sysusers = [line.split()[:3] for line in SYSUSERS.read_text().splitlines() if line and line[0] != "#"]
    # the package creates the user, the group, and the user's membership (for dbus-daemon's group lookup)
    assert {("g", group), ("u", user)} <= {(kind, name) for kind, name, *_ in sysusers}
    assert ["m", user, group] in sysusers
    policy = next(p for p in ET.parse(POLICY).getroot().iter("policy") if p.get("group") == group)
    assert [rule.attrib for rule in policy] == [{"send_destination": "org.openuc2.OTA1"}]
    assert _values(SERVICE, "Service", "RestrictAddressFamilies") == ["AF_UNIX"]  # the system bus only


def test_sandbox_exposure_is_low() -> None:
    result = _systemd_analyze("security", "--offline=yes", str(SERVICE))
    match = re.search(r"Overall exposure level for uc2otad-update\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.0, result.stdout


def test_timer_is_weekly_randomised_persistent_and_for_timers_target() -> None:
    assert _values(TIMER, "Timer", "OnCalendar") == [ON_CALENDAR]
    assert _values(TIMER, "Timer", "RandomizedDelaySec") == ["30min"]
    assert _values(TIMER, "Timer", "Persistent") == ["true"]
    assert _values(TIMER, "Timer", "Unit") == []  # the service of the same name
    assert _values(TIMER, "Install", "WantedBy") == ["timers.target"]


def test_on_calendar_elapses_on_sundays_at_three() -> None:
    result = _systemd_analyze("calendar", "--iterations=3", ON_CALENDAR)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Normalized form: Sun \*-\*-\* 03:00:00$", result.stdout, re.MULTILINE), result.stdout
    # "Next elapse: Sun 2026-12-06 03:00:00 UTC", then "Iter. #2: …" (TZ=UTC: no "(in UTC)" lines)
    elapses = re.findall(
        r"(?:Next elapse|Iter\. #\d+): (\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", result.stdout
    )
    assert len(elapses) == 3, result.stdout
    times = [datetime.strptime(elapse, "%a %Y-%m-%d %H:%M:%S") for elapse in elapses]
    assert all(elapse.startswith("Sun ") for elapse in elapses)
    assert all((t.weekday(), t.hour, t.minute, t.second) == (6, 3, 0, 0) for t in times)
    assert [(later - earlier).days for earlier, later in pairwise(times)] == [7, 7]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    ctl = Path(sys.executable).parent / "uc2otactl"  # the venv's, installed with the project
    if not ctl.exists():
        found = shutil.which("uc2otactl")
        if found is None:
            pytest.fail("no uc2otactl next to this interpreter nor on PATH: pip install -e . first")
        ctl = Path(found)
    service = SERVICE.read_text()
    assert service.count(f"ExecStart={COMMAND}\n") == 1
    (tmp_path / SERVICE.name).write_text(
        service.replace(f"ExecStart={COMMAND}", f"ExecStart={ctl} update --all --json")
    )
    shutil.copy(TIMER, tmp_path / TIMER.name)
    result = _systemd_analyze("verify", "--man=no", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uc2otad-update" not in result.stderr, result.stderr  # no warning about our units either


def test_package_installs_both_units_disabled() -> None:
    for unit in (SERVICE, TIMER):
        link = ROOT / "debian" / f"uc2otad.{unit.name}"
        assert link.is_symlink() and link.resolve() == unit
    rules = RULES.read_text()
    assert "\tdh_installsystemd --name=uc2otad-update --no-enable --no-start\n" in rules

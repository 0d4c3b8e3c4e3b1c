"""Firmware generations the virtual microscope can run: what each one lets a host observe.

A simulator written beside the code it tests agrees with that code's assumptions; these profiles tie
the observable behaviour to the firmware sources instead. Sources, as ``file:line`` at a commit:

- ``fw-main-2026-07``: youseetoo/uc2-esp32 ``063e5a6`` (2026-07-22), the CANopen firmware on ``main``.
- ``fw-2026-09``: the fixes of 2026-09-30, known only *from documentation*: openUC2/ImSwitch
  ``docs/FIRMWARE_VERSIONING.md`` @ ``33e3850`` (uc2-stack.md §4.3, §8 item 5 and 6). No source seen.
- ``legacy``: youseetoo/uc2-esp32 ``14fa3e3`` (2026-05-24), the last commit before CANopen: ISO-TP on
  the CAN bus, the WiFi OTA trigger, the short scan form.

A profile is set per master and per node (``uc2otad-sim --profile``, ``[master] profile``,
``[[nodes]] profile``). A node's profile is the firmware it runs, so it changes when the node boots an
image of the other CANopen generation (:func:`generation_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from uc2otad.errors import ConfigError


class Profile(StrEnum):
    """The firmware generations."""

    FW_MAIN_2026_07 = "fw-main-2026-07"
    FW_2026_09 = "fw-2026-09"
    LEGACY = "legacy"


#: what FW-main puts in 0x2500 and so in a scan's ``fwVersion``:
#: ``snprintf(…x2500_firmware_version_string…, "UC2-ESP v2.0")`` (``CANopenModule.cpp:1248-1249`` @063e5a6)
UNVERSIONED = "UC2-ESP v2.0"
#: how the simulator's images carry the release string that the 2026-09 build compiles in as
#: ``UC2_FW_VERSION`` (FIRMWARE_VERSIONING.md @33e3850): the string follows this tag, NUL-terminated.
#: The tag is the simulator's own convention (a real image has the bare string in .rodata)
RELEASE_TAG = b"UC2_FW_VERSION="
#: a release string is at most 64 characters (FIRMWARE_VERSIONING.md @33e3850: 64-byte version strings)
RELEASE_MAX = 64


@dataclass(frozen=True)
class FirmwareProfile:
    """One generation's observable behaviour; each field says where it comes from."""

    name: Profile
    #: CANopen (streams images by ``/ota_start``) or the legacy ISO-TP bus (WiFi OTA trigger)
    canopen: bool
    #: the HAT build's serial rate: ``UC2_canopen_master`` 921600 (uc2-stack.md §2.1, FW-main
    #: ``platformio.ini``); the legacy ``UC2_3_CAN_HAT_Master`` 115200 (FW-legacy ``PinConfig.h:31``)
    baud: int
    #: 0x2500 holds the image's release string (2026-09, from documentation) instead of the fixed
    #: :data:`UNVERSIONED` (``CANopenModule.cpp:1248-1249`` @063e5a6)
    release_strings: bool
    #: the master's scan reads 0x2501 as ``fwImage``: 2026-09 (from documentation, uc2-stack.md §7);
    #: FW-main reads only build, version and MAC (``CANopenModule.cpp:1604-1612`` @063e5a6)
    scan_reads_image: bool
    #: the longest string a scan passes on: FW-main reads into ``char tmp[40]``
    #: (``CANopenModule.cpp:1492-1503, 1605`` @063e5a6), so 39; 2026-09 masters read the 64-byte strings
    scan_text_limit: int
    #: ``/state_get`` carries ``identifier_version``/``identifier_image``: 2026-09 (from documentation,
    #: uc2-stack.md §2.4); FW-main's ``State::get`` has only name, id, date, author
    #: (``State.cpp:213-220`` @063e5a6)
    state_release: bool
    #: seconds the master waits for the size write to 0x2F01: FW-main uses ``writeSDO_u32``'s 250 ms
    #: default (``CANopenModule.h:61`` @063e5a6); 2026-09 ``SIZE_WRITE_TIMEOUT_MS`` 20 s (documentation)
    size_write_timeout: float
    #: the slave erases before it answers the size write: FW-main's ``esp_ota_begin``
    #: (``CanOpenOTA.cpp:202-208`` @063e5a6, "blocks … for 200-500ms"); 2026-09 erases sector by sector
    #: as it writes (``OTA_WITH_SEQUENTIAL_WRITES``, documentation)
    erases_before_size_answer: bool


PROFILES: dict[Profile, FirmwareProfile] = {
    Profile.FW_MAIN_2026_07: FirmwareProfile(
        name=Profile.FW_MAIN_2026_07,
        canopen=True,
        baud=921600,
        release_strings=False,
        scan_reads_image=False,
        scan_text_limit=39,
        state_release=False,
        size_write_timeout=0.25,
        erases_before_size_answer=True,
    ),
    Profile.FW_2026_09: FirmwareProfile(
        name=Profile.FW_2026_09,
        canopen=True,
        baud=921600,
        release_strings=True,
        scan_reads_image=True,
        scan_text_limit=RELEASE_MAX,
        state_release=True,
        size_write_timeout=20.0,
        erases_before_size_answer=False,
    ),
    Profile.LEGACY: FirmwareProfile(
        name=Profile.LEGACY,
        canopen=False,
        baud=115200,
        release_strings=False,
        scan_reads_image=False,
        scan_text_limit=0,
        state_release=False,
        size_write_timeout=0.25,
        erases_before_size_answer=True,
    ),
}
#: what ``uc2otad-sim`` runs without ``--profile``: the newest generation
DEFAULT_PROFILE = Profile.FW_2026_09


def profile(name: str | Profile) -> FirmwareProfile:
    """The profile called ``name``.

    :raises ConfigError: no such profile
    """
    try:
        return PROFILES[Profile(name)]
    except ValueError:
        raise ConfigError("profile", f"must be one of {', '.join(PROFILES)}, not {name!r}") from None


def release_of(image: bytes) -> str | None:
    """The release string a 2026-09 image was built with (after :data:`RELEASE_TAG`), or None."""
    start = image.find(RELEASE_TAG)
    if start < 0:
        return None
    start += len(RELEASE_TAG)
    end = image.find(b"\0", start, start + RELEASE_MAX + 1)
    text = image[start : end if end >= 0 else start + RELEASE_MAX]
    return text.decode("utf-8", errors="replace") or None


def generation_of(image: bytes) -> Profile | None:
    """The CANopen generation ``image`` was built as, or None when it does not say.

    A 2026-09 image carries its release string (:func:`release_of`); a FW-main image carries the
    literal its ``populateSystemOD`` copies into 0x2500 (``CANopenModule.cpp:1248-1249`` @063e5a6) —
    a real image has that string in its .rodata, and so do the simulator's July images.
    """
    if release_of(image) is not None:
        return Profile.FW_2026_09
    if UNVERSIONED.encode() + b"\0" in image:
        return Profile.FW_MAIN_2026_07
    return None


def rodata_for(generation: Profile, release: str) -> bytes:
    """The constant strings an image of ``generation`` carries, as :func:`generation_of` finds them."""
    if generation is Profile.FW_2026_09:
        return RELEASE_TAG + release.encode()[:RELEASE_MAX] + b"\0"
    if generation is Profile.FW_MAIN_2026_07:
        return UNVERSIONED.encode() + b"\0"
    return b""

"""The USB image rules (CONTRACT.md §4) and the reading of esptool's output, without a board.

Images come from ``espimage`` (written from the format spec, not from our parser); esptool's lines are
the ones esptool 5.6 printed against the simulated ROM loader (``esptool-rom.md``).
"""

from __future__ import annotations

import pytest
from espimage import (
    APP_OFFSET,
    PARTITION_TABLE_OFFSET,
    build_app_image,
    build_bootloader_image,
    build_merged_image,
    build_partition_table,
)

from uc2otad.errors import (
    EsptoolMissingError,
    FlashWriteError,
    ImageRefusedError,
    InvalidArgumentError,
    NoSerialPortError,
    PortAccessError,
)
from uc2otad.methods.usb import output
from uc2otad.methods.usb.flash import FlashOptions
from uc2otad.methods.usb.ports import SerialPort, choose_port
from uc2otad.methods.usb.rules import KEEP_FLASH_SETTINGS, plan_flash
from uc2otad.methods.usb.status import UsbFlashStatus, UsbStep

FOUR_MB = 4 * 1024 * 1024


def plan(data: bytes, chip: str = "esp32", **options: object) -> object:
    return plan_flash(data, name="fw.bin", board_chip=chip, flash_size=FOUR_MB, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the image decides the offset


def test_an_app_image_goes_to_0x10000_keeping_the_boards_flash_settings() -> None:
    app = build_app_image("esp32", version="v2026.11.0", date="Nov 27 2026", time="12:00:00")
    result = plan_flash(app, name="app.bin", board_chip="esp32", flash_size=FOUR_MB)
    assert (result.offset, result.erase, result.size) == (0x10000, False, len(app))
    assert result.write_options == KEEP_FLASH_SETTINGS
    assert (result.version, result.build) == ("v2026.11.0", "Nov 27 2026 12:00:00")


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
def test_a_merged_image_goes_to_0x0_as_it_is_and_may_be_erased_first(chip: str) -> None:
    image = build_merged_image(chip, app=build_app_image(chip, version="v2026.11.1"))
    result = plan_flash(image, name="m_merged.bin", board_chip=chip, flash_size=FOUR_MB, erase_flash=True)
    assert (result.offset, result.erase, result.write_options) == (0x0, True, ())
    assert result.version == "v2026.11.1"  # what the board reports once it boots the merged image's app


def test_an_offset_that_agrees_with_the_image_is_accepted() -> None:
    app = build_app_image("esp32")
    assert (
        plan_flash(app, name="a.bin", board_chip="esp32", flash_size=None, flash_offset=0x10000).offset
        == 0x10000
    )


# --------------------------------------------------------------------------- refused before any write


def test_an_app_image_at_0x0_is_refused() -> None:
    """The document's own default (offset 0 with the app-only master file) boot-loops the board."""
    with pytest.raises(ImageRefusedError, match=r"offset=0x10000, not flash_offset=0x0.*boot-loops"):
        plan(build_app_image("esp32"), flash_offset=0x0)


def test_erase_with_an_app_image_is_refused() -> None:
    with pytest.raises(ImageRefusedError, match="erase_flash needs a merged image"):
        plan(build_app_image("esp32"), erase_flash=True)


def test_a_merged_image_at_0x10000_is_refused() -> None:
    with pytest.raises(ImageRefusedError, match="offset=0x0, not flash_offset=0x10000"):
        plan(build_merged_image("esp32"), flash_offset=0x10000)


def test_an_image_for_another_chip_is_refused() -> None:
    with pytest.raises(ImageRefusedError, match=r"fw\.bin is for esp32s3, the board is esp32"):
        plan(build_app_image("esp32s3"), "esp32")


def test_a_merged_image_whose_app_is_for_another_chip_is_refused() -> None:
    with pytest.raises(ImageRefusedError, match="is for esp32s3, the board is esp32"):
        plan(build_merged_image("esp32", app=build_app_image("esp32s3")), "esp32")


def test_a_merged_image_in_the_s3_layout_is_refused_on_the_classic_esp32() -> None:
    """uc2-stack.md §6: the classic ESP32 reads its bootloader at 0x1000; at 0x0 it boot-loops."""
    layout = bytearray(build_bootloader_image("esp32"))
    layout += b"\xff" * (PARTITION_TABLE_OFFSET - len(layout)) + build_partition_table()
    layout += b"\xff" * (APP_OFFSET - len(layout)) + build_app_image("esp32")
    with pytest.raises(ImageRefusedError, match="bootloader at offset=0x0, but esp32 boots from 0x1000"):
        plan(bytes(layout), "esp32")


def test_an_image_larger_than_the_flash_is_refused() -> None:
    app = build_app_image("esp32", segment_sizes=(0x400, 0x100, 0x8000, 0x10000))
    with pytest.raises(ImageRefusedError, match=f"size={len(app)} flash_size=65536"):
        plan_flash(app, name="fw.bin", board_chip="esp32", flash_size=0x10000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"\xff" * 4096, "not a valid ESP image"), (build_bootloader_image("esp32"), "bootloader image alone")],
    ids=["erased", "bootloader"],
)
def test_what_is_not_an_app_or_merged_image_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefusedError, match=reason):
        plan(data)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"flash_offset": 0x1000}, "flash_offset must be 0x0"),
        ({"erase_flash": True, "flash_offset": 0x10000}, "erase_flash needs a merged image"),
        ({"baud": 300}, "baud must be"),
        ({"port": "ttyUSB0"}, "port must be a device path"),
        ({"firmware": "../etc/passwd"}, "path separator"),
        ({"chip": "esp8266"}, "chip must be auto"),
        ({"match": "x" * 65}, "match must be"),
    ],
)
def test_options_out_of_range_are_invalid_arguments(options: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidArgumentError, match=reason):
        FlashOptions.from_mapping(options)


# --------------------------------------------------------------------------- the port


HAT = SerialPort("/dev/ttyUSB0", description="CP2102 USB to UART", vid=0x10C4, pid=0xEA60)
XIAO = SerialPort("/dev/ttyACM0", description="UC2 HAT (XIAO)", vid=0x303A, pid=0x1001)
MODEM = SerialPort("/dev/ttyS0")


def test_the_port_asked_for_then_the_hat_links_then_match_then_a_known_adapter() -> None:
    ports = [MODEM, HAT, XIAO]
    assert (
        choose_port(requested="/dev/ttyX", hat_port="/dev/ttyUSB0", match="HAT", ports=ports) == "/dev/ttyX"
    )
    assert choose_port(requested="", hat_port="/dev/ttyUSB0", match="HAT", ports=ports) == "/dev/ttyUSB0"
    assert choose_port(requested="", hat_port="", match="hat", ports=ports) == "/dev/ttyACM0"
    assert choose_port(requested="", hat_port="", match="nothing", ports=ports) == "/dev/ttyUSB0"


def test_no_port_at_all_is_the_documents_no_serial_ports_found() -> None:
    with pytest.raises(NoSerialPortError) as failure:
        choose_port(requested="", hat_port="", match="HAT", ports=[MODEM])
    assert failure.value.row == "No serial ports found"


# --------------------------------------------------------------------------- esptool's output

PROGRESS_V5 = "Writing at 0x00018072 ━━━━━━━━━╸                      32.9% 32.00kB/97.26kB [0s] "


def test_write_progress_is_read_from_esptool_5_and_4_lines() -> None:
    assert output.write_percent(PROGRESS_V5) == 32.9
    assert output.write_percent("Writing at 0x00010000... (10 %)") == 10.0
    assert output.write_percent("Wrote 99680 bytes (99595 compressed) at 0x00010000") is None


def test_the_chip_and_flash_size_are_read_from_the_probe() -> None:
    assert output.detected_chip("Detecting chip type... ESP32-S3") == "esp32s3"
    assert output.detected_chip("Connected to ESP32 on socket://127.0.0.1:1:") == "esp32"
    assert output.flash_size("Detected flash size: 4MB") == FOUR_MB
    assert output.flash_size("Flash voltage set by a strapping pin: 3.3V") is None


@pytest.mark.parametrize(
    ("lines", "error", "row"),
    [
        (["/usr/bin/python3: No module named esptool"], EsptoolMissingError, "esptool not available"),
        (
            ["ERROR: A fatal error occurred: Could not open /dev/ttyUSB0, the port is busy or doesn't exist.",
             "([Errno 13] could not open port /dev/ttyUSB0: [Errno 13] Permission denied: '/dev/ttyUSB0')"],
            PortAccessError, "Port access denied",
        ),
        (
            ["ERROR: A fatal error occurred: This chip is ESP32-S3, not ESP32. Wrong chip argument?"],
            ImageRefusedError, "Firmware refused",
        ),
        (
            ["Lost connection, retrying...", "ERROR: A serial exception error occurred: read failed"],
            FlashWriteError, "Write failed",
        ),
    ],
    ids=["missing", "denied", "wrong-chip", "lost"],
)  # fmt: skip
def test_a_failed_run_is_named_by_the_documents_error_row(lines: list[str], error: type, row: str) -> None:
    failure = output.failure(lines, 2, what="write-flash")
    assert isinstance(failure, error)
    assert failure.row == row
    assert "exit=2" in str(failure)


# --------------------------------------------------------------------------- the status table


def test_esptools_percent_is_mapped_into_45_to_85_once_per_step() -> None:
    published: list[dict[str, object]] = []
    status = UsbFlashStatus(published.append)
    status.begin()
    status.step(UsbStep.WRITING)
    for percent in (0.0, 0.5, 16.5, 16.6, 50.0, 100.0):
        status.write_progress(percent)
    status.step(UsbStep.WRITTEN)
    assert [(s["status"], s["progress"]) for s in published] == [
        ("flashing", 45), ("flashing", 51), ("flashing", 65), ("flashing", 84), ("flashing", 85),
    ]  # fmt: skip
    assert published[-1]["message"] == "Firmware written successfully!"

"""ESP image validation: what the updater accepts, what it refuses and why, through the API and the CLI.

Every image comes from ``espimage`` (built from the format spec, not from our parser), and the valid ones
are also read by esptool, the third-party peer, which must agree with our facts.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import espimage
import pytest

from uc2otad.errors import (
    ConfigError,
    ImageError,
    ImageFormatError,
    ImageTooLargeError,
    NotAnAppImageError,
    WrongChipError,
)
from uc2otad.firmware.chips import CHIP_SPECS as _CHIP_SPECS
from uc2otad.firmware.chips import CHIPS
from uc2otad.firmware.esp_image import (
    OTA_PARTITION_SIZE,
    ImageInfo,
    ImageKind,
    parse_image,
    validate_app_image,
)

CHIP_NAMES = tuple(espimage.LAYOUTS)


def app_sha256_region(image: bytes) -> bytes:
    """The bytes the appended digest covers: everything before the last 32."""
    return image[:-32]


# --------------------------------------------------------------------------- app images


@pytest.mark.parametrize("chip", CHIP_NAMES)
def test_app_image_with_digest_is_an_ota_app(chip: str) -> None:
    image = espimage.build_app_image(chip, version="v2026.2.1", project="uc2-motor", idf_ver="v5.3.2")
    layout = espimage.LAYOUTS[chip]

    info = validate_app_image(image, chip=chip)

    assert info.kind is ImageKind.APP
    assert (info.chip, info.chip_id) == (chip, layout.chip_id)
    assert info.app_desc is not None
    assert (info.app_desc.project_name, info.app_desc.version, info.app_desc.idf_ver) == (
        "uc2-motor",
        "v2026.2.1",
        "v5.3.2",
    )
    assert (info.app_desc.date, info.app_desc.time) == ("Sep 30 2026", "09:26:22")
    assert (info.flash_mode, info.flash_freq, info.flash_size) == ("dio", "80m", "4MB")
    assert info.entry_addr == layout.iram + 0x1C
    assert [s.load_addr for s in info.segments[:3]] == [layout.drom + 0x20, layout.dram, layout.iram]
    assert [s.flash_mapped for s in info.segments] == [True, False, False, True]
    assert info.segments[0].file_offset == 0x18
    assert info.hash_appended is True
    assert info.hash_valid is True
    assert info.checksum_stored == info.checksum_computed == image[-33]
    assert info.image_size == info.size == len(image)
    assert info.sha256 == hashlib.sha256(image).hexdigest()


def test_app_image_without_digest_is_an_ota_app() -> None:
    image = espimage.build_app_image("esp32s3", hash_appended=False)

    info = validate_app_image(image, chip="esp32s3")

    assert info.hash_appended is False
    assert info.hash_valid is None
    assert info.checksum_stored == image[-1]
    assert info.image_size == len(image)


def test_app_image_with_trailing_padding_keeps_its_image_size() -> None:
    image = espimage.build_app_image("esp32s3")

    info = validate_app_image(image + b"\xff" * 100, chip="esp32s3")

    assert (info.image_size, info.size) == (len(image), len(image) + 100)


def test_app_without_descriptor_is_described_but_refused() -> None:
    image = espimage.build_app_image("esp32s3", with_app_desc=False)

    info = parse_image(image)
    assert info.kind is ImageKind.APP
    assert info.app_desc is None
    with pytest.raises(ImageFormatError, match="no app descriptor"):
        validate_app_image(image, chip="esp32s3")


def test_chip_name_is_accepted_in_esptool_spellings() -> None:
    image = espimage.build_app_image("esp32s3")

    assert validate_app_image(image, chip="ESP32-S3").chip == "esp32s3"
    with pytest.raises(ConfigError, match="unknown chip name"):
        validate_app_image(image, chip="esp33")


def test_image_for_another_chip_is_refused() -> None:
    image = espimage.build_app_image("esp32")

    with pytest.raises(WrongChipError) as caught:
        validate_app_image(image, chip="esp32s3", name="uc2-master.bin")

    assert str(caught.value) == "image is for esp32, board is esp32s3"
    assert caught.value.name == "uc2-master.bin"
    assert caught.value.error_code == "download_corrupt"


def test_image_larger_than_the_ota_partition_is_refused() -> None:
    # IROM makes the image 0x140000 + ~0x640: just over the slaves' app0/app1 partitions
    image = espimage.build_app_image("esp32s3", segment_sizes=(0x200, 0x100, 0x300, OTA_PARTITION_SIZE))

    assert parse_image(image).kind is ImageKind.APP
    with pytest.raises(ImageTooLargeError, match=f"size={len(image)} max_size={OTA_PARTITION_SIZE}"):
        validate_app_image(image, chip="esp32s3")


def test_max_size_is_the_callers_partition_size() -> None:
    image = espimage.build_app_image("esp32s3")

    assert validate_app_image(image, chip="esp32s3", max_size=len(image)).size == len(image)
    with pytest.raises(ImageTooLargeError):
        validate_app_image(image, chip="esp32s3", max_size=len(image) - 1)


# --------------------------------------------------------------------------- bootloader and merged


@pytest.mark.parametrize("chip", CHIP_NAMES)
def test_bootloader_is_recognised_and_refused(chip: str) -> None:
    image = espimage.build_bootloader_image(chip)

    info = parse_image(image)
    assert info.kind is ImageKind.BOOTLOADER
    assert info.chip == chip
    assert info.app_desc is None
    assert not any(segment.flash_mapped for segment in info.segments)
    with pytest.raises(NotAnAppImageError, match="bootloader image"):
        validate_app_image(image, chip=chip)


@pytest.mark.parametrize(("chip", "bootloader_offset"), [("esp32", 0x1000), ("esp32s3", 0x0)])
def test_merged_image_is_described_and_refused(chip: str, bootloader_offset: int) -> None:
    app = espimage.build_app_image(chip, version="v2026.3.0")
    image = espimage.build_merged_image(chip, app=app)

    info = parse_image(image)

    assert info.kind is ImageKind.MERGED
    assert info.chip == chip
    assert info.bootloader_offset == bootloader_offset
    assert image[:bootloader_offset] == b"\xff" * bootloader_offset
    assert info.size == len(image)
    assert [(p.label, p.type_name, p.subtype_name, p.offset, p.size) for p in info.partitions] == [
        ("nvs", "data", "nvs", 0x9000, 0x5000),
        ("otadata", "data", "ota", 0xE000, 0x2000),
        ("app0", "app", "ota_0", 0x10000, 0x140000),
        ("app1", "app", "ota_1", 0x150000, 0x140000),
        ("spiffs", "data", "spiffs", 0x290000, 0x160000),
    ]
    assert info.app is not None
    assert info.app.kind is ImageKind.APP
    assert info.app.app_desc is not None
    assert info.app.app_desc.version == "v2026.3.0"
    assert (info.app.size, info.app.sha256) == (len(app), hashlib.sha256(app).hexdigest())
    with pytest.raises(NotAnAppImageError, match=r"merged image \(bootloader at offset=0x"):
        validate_app_image(image, chip=chip)


def test_merged_image_without_app_is_still_described() -> None:
    image = espimage.build_merged_image("esp32s3")[: espimage.APP_OFFSET]

    info = parse_image(image)

    assert info.kind is ImageKind.MERGED
    assert info.app is None


def test_merged_image_with_broken_app_is_a_format_error() -> None:
    image = espimage.build_merged_image("esp32s3")
    broken = espimage.flip_byte(image, espimage.APP_OFFSET + 0x150)

    with pytest.raises(ImageFormatError, match=r"app at offset=0x10000: checksum mismatch"):
        parse_image(broken)


def test_merged_image_with_wrong_partition_md5_is_a_format_error() -> None:
    image = espimage.build_merged_image("esp32s3")
    # a changed byte in the app1 label: entries still parse, only the MD5 line tells
    broken = espimage.flip_byte(image, espimage.PARTITION_TABLE_OFFSET + 3 * 32 + 14, 0x01)

    with pytest.raises(ImageFormatError, match="partition table md5 mismatch"):
        parse_image(broken)


# --------------------------------------------------------------------------- broken data


def test_flipped_data_byte_is_a_checksum_mismatch() -> None:
    image = espimage.build_app_image("esp32s3", hash_appended=False)
    stored = image[-1]
    broken = espimage.flip_byte(image, 0x20 + 0x150, 0x5A)  # in DROM rodata, after the descriptor

    with pytest.raises(
        ImageFormatError, match=f"checksum mismatch: stored=0x{stored:02x} computed=0x"
    ) as caught:
        validate_app_image(broken, chip="esp32s3")
    assert f"computed=0x{stored ^ 0x5A:02x}" in str(caught.value)


def test_wrong_appended_digest_is_refused() -> None:
    image = espimage.build_app_image("esp32s3")

    with pytest.raises(ImageFormatError, match="appended sha256 mismatch"):
        parse_image(espimage.flip_byte(image, -1))


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (10, "truncated header"),
        (0x30, "segment 0 at offset=0x18"),
        (0x224, "segment 1 header at offset=0x220"),
        (-33, "checksum byte"),
        (-1, "appended sha256"),
    ],
)
def test_truncated_image_is_refused(length: int, message: str) -> None:
    image = espimage.truncate(espimage.build_app_image("esp32s3"), length)

    with pytest.raises(ImageFormatError, match=message):
        parse_image(image)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0xE8, "magic=0xe8 expected=0xe9"),
        (1, 0, "segments=0"),
        (1, 17, "segments=17"),
        (23, 2, "hash_appended=2"),
        (12, 0x77, "chip_id=0x0077"),
    ],
)
def test_broken_header_is_refused(offset: int, value: int, message: str) -> None:
    image = espimage.set_byte(espimage.build_app_image("esp32s3"), offset, value)

    with pytest.raises(ImageFormatError, match=message):
        parse_image(image)


@pytest.mark.parametrize("data", [b"", b"\xff" * 4096, b"<html>404 Not Found</html>", b"\xe9"])
def test_not_an_image_is_refused(data: bytes) -> None:
    with pytest.raises(ImageFormatError):
        validate_app_image(data, chip="esp32s3")


def test_every_refusal_is_an_image_error_for_the_status_dict() -> None:
    for error in (ImageFormatError, NotAnAppImageError, WrongChipError, ImageTooLargeError):
        assert issubclass(error, ImageError)
        assert error.error_code == "download_corrupt"


# --------------------------------------------------------------------------- CLI


def run_cli(path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "uc2otad.firmware.image", str(path), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


@dataclass(frozen=True)
class CliCase:
    make: Callable[[], bytes]
    args: tuple[str, ...]
    exit_code: int
    #: the "kind" in the JSON; None when the image did not parse
    kind: str | None
    #: a substring of the error; None when the image is valid
    error: str | None = None


def _app(**kwargs: Any) -> Callable[[], bytes]:
    return lambda: espimage.build_app_image(**kwargs)


CLI_CASES = [
    pytest.param(CliCase(_app(), ("--app", "--chip", "esp32s3"), 0, "app"), id="app"),
    pytest.param(CliCase(_app(chip="esp32", hash_appended=False), ("--app",), 0, "app"), id="app-no-digest"),
    pytest.param(CliCase(_app(with_app_desc=False), (), 0, "app"), id="app-no-desc"),
    pytest.param(
        CliCase(_app(with_app_desc=False), ("--app",), 1, "app", "descriptor"), id="app-no-desc-app"
    ),
    pytest.param(CliCase(lambda: espimage.build_bootloader_image("esp32"), (), 0, "bootloader"), id="boot"),
    pytest.param(
        CliCase(lambda: espimage.build_bootloader_image("esp32"), ("--app",), 1, "bootloader", "bootloader"),
        id="boot-app",
    ),
    pytest.param(CliCase(lambda: espimage.build_merged_image("esp32"), (), 0, "merged"), id="merged-esp32"),
    pytest.param(
        CliCase(lambda: espimage.build_merged_image("esp32s3"), ("--app",), 1, "merged", "merged"),
        id="merged-esp32s3-app",
    ),
    pytest.param(
        CliCase(_app(chip="esp32"), ("--chip", "esp32s3"), 1, "app", "board is esp32s3"), id="wrong-chip"
    ),
    pytest.param(
        CliCase(_app(), ("--app", "--max-size", "0x400"), 1, "app", "max_size=1024"), id="too-large"
    ),
    pytest.param(
        CliCase(
            lambda: espimage.flip_byte(espimage.build_app_image(), -33), (), 1, None, "checksum mismatch"
        ),
        id="bad-checksum",
    ),
    pytest.param(
        CliCase(lambda: espimage.flip_byte(espimage.build_app_image(), -1), (), 1, None, "sha256 mismatch"),
        id="bad-digest",
    ),
    pytest.param(
        CliCase(lambda: espimage.build_app_image()[:0x300], (), 1, None, "truncated"), id="truncated"
    ),
    pytest.param(CliCase(lambda: b"", (), 1, None, "empty"), id="empty"),
    pytest.param(CliCase(lambda: b"GIF89a" * 50, (), 1, None, "magic=0x47"), id="garbage"),
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_classifies_images(tmp_path: Path, case: CliCase) -> None:
    data = case.make()
    path = tmp_path / "firmware.bin"
    path.write_bytes(data)

    code, report, stderr = run_cli(path, *case.args)

    assert code == case.exit_code, stderr
    assert report["valid"] is (case.exit_code == 0)
    assert report["file"] == str(path)
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report.get("kind") == case.kind
    if case.error is None:
        assert "error" not in report
        assert stderr == ""
    else:
        assert case.error in report["error"]
        assert case.error in stderr


def test_cli_prints_app_facts(tmp_path: Path) -> None:
    path = tmp_path / "uc2-slave.bin"
    path.write_bytes(
        espimage.build_merged_image("esp32", app=espimage.build_app_image("esp32", version="v7"))
    )

    code, report, _ = run_cli(path)

    assert code == 0
    assert report["chip"] == "esp32"
    assert report["bootloader_offset"] == "0x1000"
    assert [p["label"] for p in report["partitions"]][:3] == ["nvs", "otadata", "app0"]
    assert report["app"]["app_desc"]["version"] == "v7"
    assert report["app"]["segments"][0] == {
        "load_addr": "0x3f400020",
        "length": 0x200,
        "file_offset": "0x18",
        "flash_mapped": True,
    }


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [
        ([], 64),
        (["{file}", "--chip", "esp99"], 64),
        (["{file}", "--max-size", "big"], 64),
        (["{file}", "--bogus"], 64),
        (["{missing}"], 66),
    ],
)
def test_cli_usage_errors(tmp_path: Path, argv: list[str], exit_code: int) -> None:
    file = tmp_path / "app.bin"
    file.write_bytes(espimage.build_app_image())
    args = [arg.format(file=file, missing=tmp_path / "missing.bin") for arg in argv]

    result = subprocess.run(
        [sys.executable, "-m", "uc2otad.firmware.image", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert result.returncode == exit_code, result.stderr
    assert result.stderr


# --------------------------------------------------------------------------- esptool, the peer


def run_esptool(path: Path, chip: str) -> str:
    pytest.importorskip("esptool")
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "image-info", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def esptool_field(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (.*)$", output, re.MULTILINE)
    assert match is not None, f"esptool printed no {label!r}:\n{output}"
    return match.group(1).strip()


def esptool_segments(output: str) -> list[tuple[int, int, int, str]]:
    """(length, load addr, file offset, memory types) rows of esptool's segment table."""
    rows = re.findall(
        r"^\s+\d+\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(.*)$", output, re.MULTILINE
    )
    return [
        (int(length, 16), int(addr, 16), int(offs, 16), types.strip()) for length, addr, offs, types in rows
    ]


def assert_segments_agree(info: ImageInfo, output: str) -> None:
    rows = esptool_segments(output)
    assert [(s.length, s.load_addr, s.file_offset) for s in info.segments] == [row[:3] for row in rows]
    # our "flash mapped" is esptool's IROM/DROM memory type
    flash_types = [bool({"IROM", "DROM"} & set(row[3].split(", "))) for row in rows]
    assert [s.flash_mapped for s in info.segments] == flash_types


@pytest.mark.parametrize(("chip", "hash_appended"), [("esp32s3", True), ("esp32", True), ("esp32c3", False)])
def test_esptool_agrees_on_app_image(tmp_path: Path, chip: str, hash_appended: bool) -> None:
    image = espimage.build_app_image(
        chip, version="v2026.1.5", project="uc2-laser", hash_appended=hash_appended
    )
    path = tmp_path / "app.bin"
    path.write_bytes(image)
    info = parse_image(image)
    assert info.app_desc is not None

    output = run_esptool(path, chip)

    assert esptool_field(output, "Checksum") == f"0x{info.checksum_stored:02x} (valid)"
    if hash_appended:
        digest = hashlib.sha256(app_sha256_region(image)).hexdigest()
        assert esptool_field(output, "Validation hash") == f"{digest} (valid)"
    else:
        assert "Validation hash" not in output
    assert esptool_field(output, "Project name") == info.app_desc.project_name == "uc2-laser"
    assert esptool_field(output, "App version") == info.app_desc.version == "v2026.1.5"
    assert esptool_field(output, "ESP-IDF") == info.app_desc.idf_ver
    assert esptool_field(output, "ELF file SHA256") == info.app_desc.app_elf_sha256
    assert esptool_field(output, "Compile time") == f"{info.app_desc.date} {info.app_desc.time}"
    assert esptool_field(output, "Chip ID").startswith(f"{info.chip_id} (")
    assert esptool_field(output, "Flash size") == info.flash_size
    assert esptool_field(output, "Flash freq") == info.flash_freq
    assert esptool_field(output, "Flash mode") == info.flash_mode.upper()
    assert int(esptool_field(output, "Entry point"), 16) == info.entry_addr
    assert_segments_agree(info, output)


def test_esptool_agrees_on_bootloader_image(tmp_path: Path) -> None:
    image = espimage.build_bootloader_image("esp32")
    path = tmp_path / "bootloader.bin"
    path.write_bytes(image)
    info = parse_image(image)

    output = run_esptool(path, "esp32")

    assert info.kind is ImageKind.BOOTLOADER
    assert "Bootloader Information" in output
    assert "Application Information" not in output
    assert esptool_field(output, "Checksum") == f"0x{info.checksum_stored:02x} (valid)"
    assert_segments_agree(info, output)


def test_esptool_rejects_bad_checksum_like_we_do(tmp_path: Path) -> None:
    image = espimage.flip_byte(espimage.build_app_image("esp32s3", hash_appended=False), 0x20 + 0x150, 0x21)
    path = tmp_path / "bad.bin"
    path.write_bytes(image)

    with pytest.raises(ImageFormatError) as caught:
        parse_image(image)
    ours = re.search(r"stored=0x([0-9a-f]{2}) computed=0x([0-9a-f]{2})", str(caught.value))
    assert ours is not None

    output = run_esptool(path, "esp32s3")

    assert esptool_field(output, "Checksum") == f"0x{ours[1]} (invalid - calculated 0x{ours[2]})"


def test_chip_table_matches_esptool() -> None:
    targets = pytest.importorskip("esptool.targets")
    roms = {
        name: rom
        for name, rom in targets.CHIP_DEFS.items()
        if getattr(rom, "IMAGE_CHIP_ID", None) is not None
    }

    assert dict(CHIPS) == {rom.IMAGE_CHIP_ID: name for name, rom in roms.items()}
    for spec in _CHIP_SPECS:
        rom = roms[spec.name]
        assert spec.bootloader_offset == rom.BOOTLOADER_FLASH_OFFSET, spec.name
        esptool_ranges = {(rom.IROM_MAP_START, rom.IROM_MAP_END), (rom.DROM_MAP_START, rom.DROM_MAP_END)}
        assert set(spec.flash_ranges) == esptool_ranges, spec.name
        names = {value: key for key, value in reversed(list(rom.FLASH_FREQUENCY.items()))}
        assert dict(spec.flash_freqs) == names, spec.name

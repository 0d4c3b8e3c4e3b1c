"""Which image each board gets: the procedure document's rules and the current firmware's names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from uc2otad.errors import ConfigError, FirmwareNotFoundError, UnsafeFileNameError
from uc2otad.firmware.catalog import Catalog, ImageTable
from uc2otad.firmware.listing import parse_listing
from uc2otad.firmware.manifest import parse_manifest

SERVER = "http://localhost/firmware"
MOTOR_DOC = "esp32_seeed_xiao_esp32s3_can_slave_motor.bin"
LASER_DOC = "esp32_seeed_xiao_esp32s3_can_slave_illumination.bin"
MASTER_DOC = "esp32_UC2_3_CAN_HAT_Master.bin"


def catalog_of(
    *names: str, manifest: dict[str, Any] | None = None, table: ImageTable | None = None
) -> Catalog:
    """A catalog over a Caddy-style listing of ``names``; later names have later modification times."""
    entries = [
        {"name": name, "size": 1000 + i, "url": f"./{name}", "mode": 420, "is_dir": False,
         "is_symlink": False, "mod_time": f"2026-09-{10 + i:02d}T09:26:22.5+02:00"}
        for i, name in enumerate(names)
    ]  # fmt: skip
    listing = parse_listing(json.dumps(entries).encode(), max_image_size=16 << 20)
    parsed_manifest = parse_manifest(json.dumps(manifest).encode()) if manifest is not None else None
    return Catalog(SERVER, listing, parsed_manifest, table)


def test_document_names_resolve_for_every_role() -> None:
    catalog = catalog_of(MOTOR_DOC, LASER_DOC, "esp32_seeed_xiao_esp32s3_can_slave_galvo.bin")
    assert catalog.resolve(11).name == MOTOR_DOC
    assert catalog.resolve(15).name == MOTOR_DOC
    assert catalog.resolve(20).name == LASER_DOC
    assert catalog.resolve(31).name == LASER_DOC
    assert catalog.resolve(40).name == "esp32_seeed_xiao_esp32s3_can_slave_galvo.bin"
    assert catalog.resolve(11).source == "standard"


def test_canopen_motor_images_are_per_axis_and_preferred_over_document_names() -> None:
    axes = {10: "A", 11: "X", 12: "Y", 13: "Z"}
    catalog = catalog_of(
        MOTOR_DOC,
        "esp32_UC2_canopen_slave_motor_release.bin",
        *(f"esp32_UC2_canopen_slave_motor_release_mot{axis}.bin" for axis in axes.values()),
    )
    for can_id, axis in axes.items():
        assert catalog.resolve(can_id).name == f"esp32_UC2_canopen_slave_motor_release_mot{axis}.bin"
    assert catalog.resolve(14).name == "esp32_UC2_canopen_slave_motor_release.bin"


def test_custom_image_takes_precedence_and_id_1_does_not_match_id_10() -> None:
    catalog = catalog_of(MOTOR_DOC, "id_10_custom_motor.bin", "id_1_hat.bin", MASTER_DOC)
    assert catalog.resolve(10).name == "id_10_custom_motor.bin"
    assert catalog.resolve(10).source == "custom"
    assert catalog.resolve(11).name == MOTOR_DOC
    assert catalog.resolve_master().name == "id_1_hat.bin"
    assert catalog_of("id_10_custom_motor.bin", MASTER_DOC).resolve_master().name == MASTER_DOC


def test_newest_of_several_custom_images_wins() -> None:
    # catalog_of gives later names later modification times
    catalog = catalog_of("id_11_b_new.bin", "id_11_a_newer.bin")
    assert catalog.resolve(11).name == "id_11_a_newer.bin"


def test_reported_image_beats_the_table_but_not_a_custom_image() -> None:
    reported = "esp32_UC2_canopen_slave_motor_release.bin"
    catalog = catalog_of(reported, "esp32_UC2_canopen_slave_motor_release_motX.bin")
    assert catalog.resolve(11, reported_image=reported).name == reported
    assert catalog.resolve(11, reported_image=reported).source == "reported"
    assert catalog.resolve(11, reported_image="esp32_UC2_canopen_slave_motor_release").name == reported
    assert catalog.resolve(11, reported_image="gone.bin").name.endswith("_motX.bin")
    with_custom = catalog_of(reported, "id_11_mine.bin")
    assert with_custom.resolve(11, reported_image=reported).name == "id_11_mine.bin"


def test_merged_images_never_go_to_a_slave() -> None:
    catalog = catalog_of("id_11_x_merged.bin", "esp32_UC2_canopen_slave_motor_release_motX_merged.bin")
    with pytest.raises(FirmwareNotFoundError):
        catalog.resolve(11)
    with pytest.raises(FirmwareNotFoundError, match="merged"):
        catalog.resolve(11, name="id_11_x_merged.bin")


def test_ids_without_a_standard_image_need_a_custom_one() -> None:
    catalog = catalog_of(MOTOR_DOC)
    with pytest.raises(FirmwareNotFoundError, match="CAN id 60") as caught:
        catalog.resolve(60)
    assert caught.value.error_code == "firmware_not_found"
    assert catalog_of("id_60_gpio.bin").resolve(60).name == "id_60_gpio.bin"


def test_master_is_not_a_slave_target() -> None:
    with pytest.raises(ValueError, match="master"):
        catalog_of(MASTER_DOC).resolve(1)


def test_master_app_by_default_merged_on_request() -> None:
    catalog = catalog_of(
        "esp32_UC2_canopen_master_release.bin", "esp32_UC2_canopen_master_release_merged.bin", MASTER_DOC
    )
    assert catalog.resolve_master().name == "esp32_UC2_canopen_master_release.bin"
    assert catalog.resolve_master(merged=True).name == "esp32_UC2_canopen_master_release_merged.bin"
    assert catalog.resolve_master(name=MASTER_DOC).name == MASTER_DOC
    assert catalog_of("my_HAT_master_build.bin").resolve_master().name == "my_HAT_master_build.bin"


def test_named_image_must_be_listed_and_plain() -> None:
    catalog = catalog_of(MOTOR_DOC, "special.bin")
    assert catalog.resolve(11, name="special.bin").source == "named"
    with pytest.raises(FirmwareNotFoundError):
        catalog.resolve(11, name="absent.bin")
    with pytest.raises(UnsafeFileNameError):
        catalog.resolve(11, name="../special.bin")


def test_list_firmware_has_the_document_shape() -> None:
    manifest = {"version": "v2026.1.0", "files": {MOTOR_DOC: {"size": 1000, "sha256": "ab" * 32}}}
    catalog = catalog_of(MOTOR_DOC, MASTER_DOC, "id_60_gpio.bin", "notes.txt", manifest=manifest)
    document = catalog.as_document()
    assert document["status"] == "success"
    assert document["firmware_server"] == SERVER
    assert set(document["firmware"]) == {"1", "10", "11", "12", "13", "14", "15", "60"}
    assert document["firmware_count"] == len(document["firmware"])
    motor = document["firmware"]["11"]
    assert motor == {
        "filename": MOTOR_DOC,
        "url": f"{SERVER}/{MOTOR_DOC}",
        "can_id": 11,
        "size": 1000,
        "source": "server",
        "mod_time": "2026-09-10T07:26:22Z",
        "sha256": "ab" * 32,
        "version": "v2026.1.0",
    }
    assert "sha256" not in document["firmware"]["1"]  # not in the manifest: no promise to show
    assert document["firmware"]["1"]["filename"] == MASTER_DOC


def test_table_overrides_replace_one_id_and_are_checked() -> None:
    table = ImageTable.standard().with_overrides({"11": ["lab_motor_x.bin"], "60-61": ["lab_io.bin"]})
    catalog = catalog_of(MOTOR_DOC, "lab_motor_x.bin", "lab_io.bin", table=table)
    assert catalog.resolve(11).name == "lab_motor_x.bin"
    assert catalog.resolve(12).name == MOTOR_DOC
    assert catalog.resolve(61).name == "lab_io.bin"
    with pytest.raises(ConfigError, match=r"catalog\.images\.x"):
        ImageTable.standard().with_overrides({"x": ["a.bin"]})
    with pytest.raises(ConfigError, match="slave CAN ids"):
        ImageTable.standard().with_overrides({"1": ["a.bin"]})
    with pytest.raises(ConfigError, match="path separator"):
        ImageTable.standard().with_overrides({"11": ["../a.bin"]})
    with pytest.raises(ConfigError, match="list of file names"):
        ImageTable.standard().with_overrides({"11": "a.bin"})


def test_standard_table_covers_the_documented_ids() -> None:
    table = ImageTable.standard()
    assert set(table.slaves) == {*range(10, 16), *range(20, 25), 30, 31, *range(40, 50)}
    for can_id in table.slaves:  # a CANopen name, the document's name, the release's board id (issue 21)
        assert len(table.candidates(can_id)) == 3
        assert table.candidates(can_id)[-1].startswith("uc2-can-slave-")
    assert MASTER_DOC in table.master

"""Offline release bundles (issue 21): ``uc2otad.firmware.bundle.read_bundle``.

Bundles are built here with zipfile and tarfile in the release workflow's layout (youseetoo/uc2-esp32
``build-and-release.yaml``: ``firmware-index.json``, ``<id>.bin``, ``<id>-manifest.json``) or with our
``version.json``, from images made by ``tests/espimage.py``; each refusal test breaks one rule.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from espimage import build_app_image, build_merged_image

from uc2otad.contract import ErrorCode
from uc2otad.errors import BundleError, FirmwareError
from uc2otad.firmware.bundle import Bundle, _Collector, read_bundle

RELEASE = "v2026.2.0"
MOTOR = build_merged_image("esp32s3", app=build_app_image("esp32s3", version=RELEASE))
MASTER = build_merged_image("esp32", app=build_app_image("esp32", version=RELEASE, project="uc2-master"))
LASER_APP = build_app_image("esp32s3", version=RELEASE, project="uc2-laser")


def board_manifest(name: str, board_id: str, chip: str, version: str = RELEASE) -> bytes:
    """``<board_id>-manifest.json`` as build-and-release.yaml lines 185-198 write it."""
    return json.dumps(
        {
            "name": name,
            "version": version,
            "home_assistant_domain": "UC2-ESP32",
            "funding_url": "https://github.com/youseetoo/uc2-esp32",
            "builds": [{"chipFamily": chip, "parts": [{"path": f"{board_id}.bin", "offset": 0}]}],
        }
    ).encode()


def release_files(version: str = RELEASE) -> dict[str, bytes]:
    """Two boards of a release, with the index build-and-release.yaml lines 240-270 write."""
    boards = [
        ("uc2-can-slave-motor", "UC2 CAN Slave Motor", "ESP32-S3", MOTOR),
        ("uc2-can-master", "UC2 CAN Master", "ESP32", MASTER),
    ]
    files: dict[str, bytes] = {}
    entries = []
    for board_id, name, chip, image in boards:
        files[f"{board_id}.bin"] = image
        files[f"{board_id}-manifest.json"] = board_manifest(name, board_id, chip, version)
        entries.append(
            {
                "id": board_id,
                "name": name,
                "chipFamily": chip,
                "manifest": f"{board_id}-manifest.json",
                "binary": f"{board_id}.bin",
            }
        )
    files["firmware-index.json"] = json.dumps(
        {
            "version": version,
            "generated": "2026-11-30T10:00:00Z",
            "repository": "youseetoo/uc2-esp32",
            "cdn_base": f"https://raw.githubusercontent.com/youseetoo/uc2-esp32-binaries/refs/heads/{version}",
            "firmware": entries,
        }
    ).encode()
    return files


def version_json(
    images: Mapping[str, bytes],
    version: str = RELEASE,
    *,
    extra: Mapping[str, Mapping[str, object]] | None = None,
) -> bytes:
    """Our ``version.json`` (``uc2otad/firmware/manifest.py``) listing ``images``; ``extra`` adds fields."""
    files: dict[str, dict[str, object]] = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in images.items()
    }
    for name, fields in (extra or {}).items():
        files.setdefault(name, {}).update(fields)
    return json.dumps({"version": version, "commit": "abc1234", "files": files}).encode()


def ours_files() -> dict[str, bytes]:
    images = {"uc2-laser.bin": LASER_APP, "uc2-motor.bin": MOTOR}
    return {
        **images,
        "version.json": version_json(images),
        "version.json.minisig": b"untrusted comment: test\nRWQ...\n",
        "README.md": b"USB stick for the lab\n",
    }


def write_zip(path: Path, files: Mapping[str, bytes], *, folder: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if folder:
            archive.writestr(zipfile.ZipInfo(f"{folder}/"), b"")
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}" if folder else name, data)
    return path


def add_tar_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def write_tar_gz(path: Path, files: Mapping[str, bytes], *, folder: str = "") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        if folder:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        for name, data in files.items():
            add_tar_file(archive, f"{folder}/{name}" if folder else name, data)
    return path


WRITERS = {"zip": write_zip, "tar.gz": write_tar_gz}


def read(path: Path, **limits: int) -> Bundle:
    with path.open("rb") as source:
        return read_bundle(source, **limits)


def refused(path: Path, rule: str, **limits: int) -> BundleError:
    with pytest.raises(BundleError) as caught:
        read(path, **limits)
    assert caught.value.rule == rule, caught.value
    return caught.value


@pytest.mark.parametrize("kind", WRITERS)
def test_release_workflow_layout(tmp_path: Path, kind: str) -> None:
    # an unremarkable name: the format comes from the magic bytes
    bundle = read(WRITERS[kind](tmp_path / "stick.dat", release_files()))

    assert bundle.version == RELEASE
    assert [image.name for image in bundle.images] == ["uc2-can-master.bin", "uc2-can-slave-motor.bin"]
    master, motor = bundle.images
    assert master.data == MASTER
    assert master.size == len(MASTER)
    assert master.sha256 == hashlib.sha256(MASTER).hexdigest()
    assert master.chip_family == "ESP32"
    assert motor.chip_family == "ESP32-S3"
    assert motor.version == RELEASE
    assert bundle.manifest_bytes is None
    assert bundle.signature_bytes is None
    assert bundle.index is not None
    assert bundle.index.repository == "youseetoo/uc2-esp32"
    assert {entry.id for entry in bundle.index.firmware} == {"uc2-can-slave-motor", "uc2-can-master"}


@pytest.mark.parametrize("kind", WRITERS)
def test_our_version_json_layout(tmp_path: Path, kind: str) -> None:
    files = ours_files()
    files["version.json"] = version_json(
        {"uc2-laser.bin": LASER_APP, "uc2-motor.bin": MOTOR},
        extra={"uc2-laser.bin": {"version": "v2026.2.1"}},
    )
    bundle = read(WRITERS[kind](tmp_path / "bundle", files))

    assert bundle.version == RELEASE
    assert {image.name: image.version for image in bundle.images} == {
        "uc2-laser.bin": "v2026.2.1",
        "uc2-motor.bin": RELEASE,
    }
    assert all(image.chip_family is None for image in bundle.images)
    assert bundle.manifest_bytes == files["version.json"]
    assert bundle.signature_bytes == files["version.json.minisig"]
    assert bundle.index is None


def test_both_manifests_each_vouch(tmp_path: Path) -> None:
    files = release_files()
    files["uc2-laser.bin"] = LASER_APP
    files["version.json"] = version_json({"uc2-laser.bin": LASER_APP, "uc2-can-master.bin": MASTER})
    bundle = read(write_zip(tmp_path / "b.zip", files))
    assert {image.name: image.chip_family for image in bundle.images} == {
        "uc2-can-master.bin": "ESP32",
        "uc2-can-slave-motor.bin": "ESP32-S3",
        "uc2-laser.bin": None,
    }


@pytest.mark.parametrize("kind", WRITERS)
def test_single_top_folder_accepted(tmp_path: Path, kind: str) -> None:
    bundle = read(WRITERS[kind](tmp_path / "bundle", release_files(), folder=f"uc2-esp32-{RELEASE}"))
    assert len(bundle.images) == 2


def test_tar_of_dot_accepted(tmp_path: Path) -> None:
    """``tar czf b.tar.gz -C release .`` names members ``./x`` after a ``.`` entry."""
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        archive.addfile(root)
        for name, data in release_files().items():
            add_tar_file(archive, f"./{name}", data)
    assert len(read(path).images) == 2


def test_macos_litter_skipped(tmp_path: Path) -> None:
    files = {**release_files(), ".DS_Store": b"\0\0\0\1Bud1"}
    path = write_zip(tmp_path / "b.zip", files, folder="release")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("__MACOSX/release/._uc2-can-master.bin", b"\0\5\26\7")
    assert len(read(path).images) == 2


def test_pipe_is_spooled(tmp_path: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = write_zip(tmp_path / "b.zip", release_files()).read_bytes()
    with io.BufferedReader(Pipe(data)) as source:
        assert not source.seekable()
        assert len(read_bundle(source).images) == 2


def test_error_is_a_firmware_error_with_download_corrupt(tmp_path: Path) -> None:
    error = refused(write_zip(tmp_path / "b.zip", {"x.txt": b"x"}), "no_manifest")
    assert isinstance(error, FirmwareError)
    assert error.error_code is ErrorCode.DOWNLOAD_CORRUPT


# --- refusals: promises -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITERS)
def test_sha256_mismatch(tmp_path: Path, kind: str) -> None:
    files = ours_files()
    files["uc2-motor.bin"] = MASTER[: len(MOTOR)].ljust(len(MOTOR), b"\xff")  # same size, other bytes
    error = refused(WRITERS[kind](tmp_path / "b", files), "sha256")
    assert error.name == "uc2-motor.bin"
    assert "uc2-motor.bin" in str(error)


def test_size_mismatch(tmp_path: Path) -> None:
    files = ours_files()
    files["uc2-motor.bin"] = MOTOR + b"\xff"
    assert refused(write_zip(tmp_path / "b.zip", files), "size").name == "uc2-motor.bin"


def test_file_listed_in_version_json_missing(tmp_path: Path) -> None:
    files = ours_files()
    del files["uc2-laser.bin"]
    assert refused(write_zip(tmp_path / "b.zip", files), "missing").name == "uc2-laser.bin"


@pytest.mark.parametrize("missing", ["uc2-can-master.bin", "uc2-can-master-manifest.json"])
def test_file_named_by_index_missing(tmp_path: Path, missing: str) -> None:
    files = release_files()
    del files[missing]
    assert refused(write_tar_gz(tmp_path / "b.tgz", files), "missing").name == missing


def test_unknown_bin_refused(tmp_path: Path) -> None:
    files = {**release_files(), "id_11_custom.bin": LASER_APP}
    error = refused(write_zip(tmp_path / "b.zip", files), "unlisted")
    assert error.name == "id_11_custom.bin"


def test_no_manifest_at_all(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "b.zip", {"uc2-motor.bin": MOTOR}), "no_manifest")


def test_no_image_at_all(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "b.zip", {"version.json": version_json({}), "README.md": b"x"}), "no_images")


def test_version_json_and_index_disagree(tmp_path: Path) -> None:
    files = release_files()
    files["version.json"] = version_json({"uc2-can-master.bin": MASTER}, version="v2026.1.0")
    refused(write_zip(tmp_path / "b.zip", files), "version_mismatch")


def test_board_manifest_chip_disagrees_with_index(tmp_path: Path) -> None:
    files = release_files()
    files["uc2-can-master-manifest.json"] = board_manifest("UC2 CAN Master", "uc2-can-master", "ESP32-S3")
    assert (
        refused(write_zip(tmp_path / "b.zip", files), "chip_mismatch").name == "uc2-can-master-manifest.json"
    )


@pytest.mark.parametrize(
    ("name", "body", "rule"),
    [
        ("version.json", b"{not json", "manifest_invalid"),
        (
            "version.json",
            json.dumps({"files": {"../x.bin": {"size": 1, "sha256": "0" * 64}}}).encode(),
            "manifest_invalid",
        ),
        ("firmware-index.json", b"[]", "index_invalid"),
        ("firmware-index.json", json.dumps({"firmware": [{"binary": "../x.bin"}]}).encode(), "index_invalid"),
        ("firmware-index.json", json.dumps({"firmware": [{"id": "x"}]}).encode(), "index_invalid"),
        (
            "firmware-index.json",
            json.dumps({"firmware": [{"binary": "uc2-motor.bin", "manifest": "notes.txt"}]}).encode(),
            "index_invalid",
        ),
    ],
)
def test_invalid_manifests(tmp_path: Path, name: str, body: bytes, rule: str) -> None:
    files = {"uc2-motor.bin": MOTOR, name: body}
    assert refused(write_zip(tmp_path / "b.zip", files), rule).name == name


# --- refusals: paths and member types -----------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITERS)
def test_path_traversal(tmp_path: Path, kind: str) -> None:
    files = {**ours_files(), "../x.bin": MOTOR}
    assert refused(WRITERS[kind](tmp_path / "b", files), "traversal").name == "../x.bin"


@pytest.mark.parametrize("kind", WRITERS)
def test_absolute_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "b"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            info = zipfile.ZipInfo("x.bin")
            info.filename = "/etc/x.bin"  # zipfile strips a leading slash from the constructor's name
            archive.writestr(info, MOTOR)
    else:
        write_tar_gz(path, {"/etc/x.bin": MOTOR})
    refused(path, "absolute_path")


def test_hidden_or_control_names(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "a.zip", {**ours_files(), ".x.bin": MOTOR}), "file_name")
    refused(write_zip(tmp_path / "b.zip", {**ours_files(), "x\x1b[2J.bin": MOTOR}), "file_name")


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_member_in_tar(tmp_path: Path, link: bytes) -> None:
    path = write_tar_gz(tmp_path / "b.tgz", ours_files())
    with gzip.open(path, "rb") as unzipped:
        plain = unzipped.read()
    plain_tar = io.BytesIO(plain)
    with tarfile.open(fileobj=plain_tar, mode="a") as archive:
        info = tarfile.TarInfo("uc2-extra.bin")
        info.type = link
        info.linkname = "/etc/shadow"
        archive.addfile(info)
    path.write_bytes(gzip.compress(plain_tar.getvalue()))
    assert refused(path, "link").name == "uc2-extra.bin"


def test_symlink_member_in_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "b.zip", ours_files())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("uc2-extra.bin")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/shadow")
    refused(path, "link")


def test_device_member_in_tar(tmp_path: Path) -> None:
    path = tmp_path / "b.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in ours_files().items():
            add_tar_file(archive, name, data)
        info = tarfile.TarInfo("sda.bin")
        info.type = tarfile.BLKTYPE
        info.devmajor, info.devminor = 8, 0
        archive.addfile(info)
    refused(path, "special_file")


def test_nested_deeper_refused(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "b.zip", {f"sub/{name}": data for name, data in ours_files().items()}, folder="r"
    )
    refused(path, "nested")


def test_two_top_folders_refused(tmp_path: Path) -> None:
    files = {f"a/{name}": data for name, data in ours_files().items()}
    files["b/README.md"] = b"x"
    refused(write_tar_gz(tmp_path / "b.tgz", files), "top_folder")


def test_files_beside_top_folder_refused(tmp_path: Path) -> None:
    files = {f"release/{name}": data for name, data in ours_files().items()}
    files["README.md"] = b"x"
    refused(write_zip(tmp_path / "b.zip", files), "top_folder")


def test_same_name_in_other_case_refused(tmp_path: Path) -> None:
    files = {**ours_files(), "UC2-MOTOR.BIN": MOTOR}
    refused(write_zip(tmp_path / "b.zip", files), "duplicate")


# --- refusals: sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITERS)
def test_oversized_member(tmp_path: Path, kind: str) -> None:
    error = refused(WRITERS[kind](tmp_path / "b", ours_files()), "too_large", max_image_size=len(MOTOR) - 1)
    assert error.name == "uc2-motor.bin"


def test_zip_bomb_refused_by_declared_size(tmp_path: Path) -> None:
    """64 MiB of zeros deflate to about 64 KiB: refused before a byte is inflated."""
    files = {**ours_files(), "zeros.bin": bytes(64 * 1024 * 1024)}
    path = write_zip(tmp_path / "b.zip", files)
    assert path.stat().st_size < 1024 * 1024
    assert refused(path, "too_large").name == "zeros.bin"


@pytest.mark.parametrize("kind", WRITERS)
def test_total_over_limit(tmp_path: Path, kind: str) -> None:
    refused(WRITERS[kind](tmp_path / "b", ours_files()), "total_too_large", max_total=len(MOTOR) + 100)


def test_bytes_counted_not_taken_from_headers() -> None:
    """zipfile and tarfile stop at the declared size themselves; the count is the guard if one ever
    does not (a stream longer than its header) and for the total."""
    collector = _Collector(max_image_size=1000, max_total=1500)
    collector.declare("a.bin", 10)
    with pytest.raises(BundleError) as caught:
        collector.read("a.bin", io.BytesIO(bytes(20)), 10)
    assert caught.value.rule == "damaged"
    collector.read("b.bin", io.BytesIO(bytes(900)), 900)
    with pytest.raises(BundleError) as caught:
        collector.read("c.bin", io.BytesIO(bytes(900)), 900)
    assert caught.value.rule == "total_too_large"


def test_pax_record_bounded(tmp_path: Path) -> None:
    """tarfile reads a pax record whole: the decompressed stream itself is bounded."""
    path = tmp_path / "b.tgz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("x.bin")
        info.pax_headers = {"comment": "x" * (3 * 1024 * 1024)}
        archive.addfile(info, io.BytesIO(b""))
    refused(path, "total_too_large", max_total=1024 * 1024)


# --- refusals: damaged archives -----------------------------------------------------------------------


def test_zip_member_corrupted_after_writing(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in ours_files().items():
            archive.writestr(name, data)
    raw = bytearray(path.read_bytes())
    where = raw.index(LASER_APP) + len(LASER_APP) // 2
    raw[where] ^= 0x01
    path.write_bytes(bytes(raw))

    error = refused(path, "damaged")
    assert error.name == "uc2-laser.bin"
    assert "CRC" in str(error)


def test_truncated_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "b.zip", ours_files())
    path.write_bytes(path.read_bytes()[:-200])
    refused(path, "damaged")


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write_tar_gz(tmp_path / "b.tgz", ours_files())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(path, "damaged")


def test_gzip_trailer_cut(tmp_path: Path) -> None:
    """Every member is intact, only the gzip CRC/length trailer is lost: still refused."""
    path = write_tar_gz(tmp_path / "b.tgz", ours_files())
    path.write_bytes(path.read_bytes()[:-8])
    refused(path, "damaged")


def test_gzip_bad_crc(tmp_path: Path) -> None:
    path = write_tar_gz(tmp_path / "b.tgz", ours_files())
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(raw))
    refused(path, "damaged")


@pytest.mark.parametrize("data", [MOTOR, b"", b"PK", b"BZh91AY&SY", b"\xfd7zXZ\0" + bytes(100)])
def test_not_an_archive(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "b.zip"
    path.write_bytes(data)
    refused(path, "format")

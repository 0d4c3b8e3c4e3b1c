"""Reading what a firmware server says: listings (Caddy, nginx), version.json, file names."""

from __future__ import annotations

import json

import pytest

from uc2otad.errors import ListingError, ManifestError, UnsafeFileNameError
from uc2otad.firmware.listing import parse_listing
from uc2otad.firmware.manifest import parse_manifest
from uc2otad.firmware.names import check_file_name
from uc2otad.retry import RetryPolicy

LIMIT = 16 << 20

# what nginx 1.22 sends for `autoindex on; autoindex_format json;`
NGINX_LISTING = b"""[
{ "name":"drafts", "type":"directory", "mtime":"Tue, 01 Sep 2026 08:00:00 GMT" },
{ "name":"esp32_seeed_xiao_esp32s3_can_slave_motor.bin", "type":"file", "mtime":"Wed, 03 Dec 2025 16:31:06 GMT", "size":850768 },
{ "name":"version.json", "type":"file", "mtime":"Wed, 03 Dec 2025 16:31:06 GMT", "size":312 }
]"""  # noqa: E501


@pytest.mark.parametrize(
    "name",
    ["", "../../etc/passwd", "a/b.bin", "a\\b.bin", "..", "x..bin", ".hidden.bin", "nul\x00.bin",
     "line\nbreak.bin", "bell\x07.bin", "rtl\u202egnp.bin", "x" * 252 + ".bin"],
)  # fmt: skip
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeFileNameError):
        check_file_name(name)


@pytest.mark.parametrize(
    "name", ["id_11_custom_motor.bin", "esp32_UC2_canopen_master_release.bin", "ü-v1.2.bin"]
)
def test_plain_file_names_pass(name: str) -> None:
    assert check_file_name(name) == name


def test_nginx_autoindex_json_is_read() -> None:
    listing = parse_listing(NGINX_LISTING, max_image_size=LIMIT)
    assert list(listing.files) == ["esp32_seeed_xiao_esp32s3_can_slave_motor.bin"]
    motor = listing.files["esp32_seeed_xiao_esp32s3_can_slave_motor.bin"]
    assert motor.size == 850768
    assert motor.mod_time_text == "2025-12-03T16:31:06Z"
    assert listing.refused == ()


def test_hostile_entries_are_refused_one_by_one() -> None:
    entries = [
        {"name": "../../etc/passwd", "size": 10, "is_dir": False},
        {"name": "huge.bin", "size": 10 * 1024**3, "is_dir": False},
        {"name": "nosize.bin", "is_dir": False},
        {"name": "negative.bin", "size": -1},
        {"name": "boolean.bin", "size": True},
        "not an object",
        {"name": 7, "size": 1},
        {"name": "good.bin", "size": 1000, "mod_time": "not a time"},
        {"name": "good.bin", "size": 2000},
    ]
    listing = parse_listing(json.dumps(entries).encode(), max_image_size=LIMIT)
    assert list(listing.files) == ["good.bin"]
    assert listing.files["good.bin"].size == 1000
    assert listing.files["good.bin"].mod_time is None
    reasons = {entry.name: entry.reason for entry in listing.refused}
    assert "path separator" in reasons["../../etc/passwd"]
    assert "over the limit" in reasons["huge.bin"]
    assert {"nosize.bin", "negative.bin", "boolean.bin", "good.bin"} <= set(reasons)
    assert len(listing.refused) == 8


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html><body><a href='x.bin'>x.bin</a></body></html>", "no JSON listing"),
        (b"\xff\xfe garbage", "no JSON listing"),
        (b'{"items": []}', "not a list"),
        (b"", "no JSON listing"),
    ],
)
def test_a_body_that_is_no_listing_is_a_listing_error(body: bytes, match: str) -> None:
    with pytest.raises(ListingError, match=match) as caught:
        parse_listing(body, max_image_size=LIMIT, content_type="text/html")
    assert caught.value.error_code == "firmware_not_found"


def test_manifest_promises_size_sha256_and_version() -> None:
    body = {
        "version": "v2026.0.0-beta.4-6-g2108590-t20260930092622",
        "commit": "2108590",
        "files": {
            "a.bin": {"size": 879632, "sha256": "AB" * 32},
            "b.bin": {"size": 1, "sha256": "cd" * 32, "version": "v9"},
            "../evil.bin": {"size": 1, "sha256": "cd" * 32},
        },
    }
    manifest = parse_manifest(json.dumps(body).encode())
    assert manifest.files["a.bin"].sha256 == "ab" * 32
    assert manifest.files["a.bin"].version == body["version"]
    assert manifest.files["b.bin"].version == "v9"
    assert "../evil.bin" not in manifest.files


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"files": []}',
        b'{"files": {"a.bin": {"size": 1}}}',
        b'{"files": {"a.bin": {"size": "1", "sha256": "' + b"ab" * 32 + b'"}}}',
        b'{"files": {"a.bin": {"size": 1, "sha256": "abc"}}}',
        b'{"version": 3}',
    ],
)
def test_a_manifest_that_cannot_be_trusted_is_an_error(body: bytes) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(body)
    assert caught.value.error_code == "download_corrupt"


def test_retry_policy_is_bounded_and_backs_off() -> None:
    assert list(RetryPolicy(attempts=4, first_delay=1, factor=2, max_delay=3).delays()) == [1, 2, 3]
    assert list(RetryPolicy(attempts=1).delays()) == []
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)

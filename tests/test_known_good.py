"""The images kept for a rollback (``firmware/known_good.py``) and which ones the history keeps
(``engine/rollback.py``): kept by content, handed out only when they still hash right, pruned to each
board's last two, and a crash mid-write leaves nothing half-written behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from test_minisign import KeyPair, new_key, program  # noqa: F401 - fixtures

from uc2otad.engine.rollback import check_kept, installed
from uc2otad.engine.store import JobRecord
from uc2otad.errors import FirmwareNotFoundError, SignatureInvalidError
from uc2otad.firmware.known_good import FOLDER, KnownGoodImage, KnownGoodImages, KnownGoodRecord
from uc2otad.firmware.signing import SigningPolicy

FIRST, SECOND, THIRD = b"first image" * 100, b"second image" * 100, b"third image" * 100


def record(data: bytes, name: str = "motor.bin", version: str | None = "v1") -> KnownGoodRecord:
    return KnownGoodRecord(name, len(data), hashlib.sha256(data).hexdigest(), version, "http://127.0.0.1/fw")


def row(job: int, sha256: str | None, state: str = "success", can_id: int = 11) -> JobRecord:
    return JobRecord(job_id=str(job), can_id=can_id, method="can", state=state, sha256=sha256)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_kept_image_comes_back_byte_for_byte_with_its_record(tmp_path: Path) -> None:
    images = KnownGoodImages(tmp_path)
    await images.keep(record(FIRST), FIRST)
    await images.keep(record(FIRST), FIRST)  # once is enough: the second keep changes nothing
    kept = await images.load(sha(FIRST))
    assert (kept.data, kept.record.name, kept.record.version) == (FIRST, "motor.bin", "v1")
    assert kept.record.kept_at  # when it was first kept
    assert [r.sha256 for r in await images.kept()] == [sha(FIRST)]
    mode = (await asyncio.to_thread((tmp_path / FOLDER / sha(FIRST)).stat)).st_mode
    assert mode & 0o777 == 0o644


async def test_a_damaged_image_is_never_handed_out_and_is_deleted(tmp_path: Path) -> None:
    images = KnownGoodImages(tmp_path)
    await images.keep(record(FIRST), FIRST)
    path = tmp_path / FOLDER / sha(FIRST)
    await asyncio.to_thread(path.write_bytes, FIRST[:-1] + b"X")  # a bit rotted on the card
    with pytest.raises(FirmwareNotFoundError, match="damaged"):
        await images.load(sha(FIRST))
    assert await images.kept() == []
    with pytest.raises(FirmwareNotFoundError):
        await images.load(sha(FIRST))


async def test_bytes_that_do_not_match_their_hash_are_refused(tmp_path: Path) -> None:
    images = KnownGoodImages(tmp_path)
    with pytest.raises(Exception, match="do not match"):
        await images.keep(record(FIRST), SECOND)
    assert await images.kept() == []


async def test_prune_keeps_only_what_it_is_told_and_clear_deletes_all(tmp_path: Path) -> None:
    images = KnownGoodImages(tmp_path)
    for data in (FIRST, SECOND, THIRD):
        await images.keep(record(data), data)
    assert await images.prune({sha(SECOND), sha(THIRD)}) == 1
    assert sorted(r.sha256 for r in await images.kept()) == sorted([sha(SECOND), sha(THIRD)])
    assert await images.clear() == 2
    assert await images.kept() == []


async def test_what_a_crash_mid_write_leaves_is_not_an_image(tmp_path: Path) -> None:
    images = KnownGoodImages(tmp_path)
    await images.keep(record(FIRST), FIRST)
    folder = tmp_path / FOLDER
    await asyncio.to_thread((folder / ".tmp-0123456789abcdef").write_bytes, SECOND[:10])  # the transfer
    await asyncio.to_thread((folder / sha(SECOND)).write_bytes, SECOND)  # the image, its record never written
    with pytest.raises(FirmwareNotFoundError):
        await images.load(sha(SECOND))  # no record: not handed out
    await images.prune({sha(FIRST), sha(SECOND)})
    left = sorted(entry.name for entry in await asyncio.to_thread(lambda: list(folder.iterdir())))
    assert left == sorted([sha(FIRST), sha(FIRST) + ".json", sha(SECOND)])  # the leftover transfer is gone


def test_installed_is_each_boards_newest_two_distinct_successful_images() -> None:
    newest_first = [
        row(6, "c", state="failed"),  # a failed job changes nothing on the board
        row(5, "b"),  # a rollback to b
        row(4, "a"),
        row(3, "a"),  # the same image twice counts once
        row(2, None, state="running"),
        row(1, "b"),
    ]
    assert installed(newest_first) == ["b", "a"]
    assert installed(newest_first[:1]) == []
    assert installed([row(1, "a")]) == ["a"]


def test_a_kept_image_goes_back_under_signatures_only_with_its_signed_manifest(
    new_key: Callable[..., KeyPair],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Issue 21: with a trusted key installed, Rollback checks the manifest and signature kept beside the
    image against the keys trusted now (``engine/rollback.py`` ``check_kept``)."""
    lab = new_key("lab")
    policy = SigningPolicy(keys_dir=lab.public.parent)
    manifest = tmp_path / "version.json"
    manifest.write_text(
        json.dumps({"version": "v1", "files": {"motor.bin": {"size": len(FIRST), "sha256": sha(FIRST)}}})
    )
    signature = lab.sign(manifest).read_bytes()
    kept = KnownGoodImage(record(FIRST), tmp_path / sha(FIRST), FIRST, manifest.read_bytes(), signature)

    check_kept(kept, policy)  # signed by a trusted key, listing this very image
    check_kept(replace(kept, manifest=None, signature=None), SigningPolicy(keys_dir=tmp_path / "none"))
    with pytest.raises(SignatureInvalidError, match=r"not signed|no version\.json"):
        check_kept(replace(kept, manifest=None, signature=None), policy)  # kept before signatures
    with pytest.raises(SignatureInvalidError, match="not the one its signed manifest lists"):
        check_kept(replace(kept, record=record(SECOND)), policy)

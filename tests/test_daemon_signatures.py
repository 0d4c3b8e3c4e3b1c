"""Signed firmware through the daemon (issue 21), the real ``minisign`` program as the lab's signer.

With a trusted key installed (``firmware.keys_dir``), the daemon updates a board only from a
``version.json`` signed by it: a changed manifest, a signature by a key that is not trusted, a key file
with the signer's id but other key bytes, a missing signature, an image the signed manifest does not
list, and an image whose sha256 differs from the signed one are each refused with ``SignatureInvalid``
/ ``signature_invalid`` — the board gets nothing and the cache keeps nothing. Then the good signature
is accepted and the board runs the image. The source is a firmware folder (no server needed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import StatusSignals
from test_daemon_update import FAST_UPDATE
from test_firmware_folder import IMAGE, MOTOR, microscope_for
from test_link_ota_stream import NODE
from test_minisign import KeyPair, new_key, program  # noqa: F401 - fixtures

from uc2otad.api import names


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher
    watcher.close()


def manifest_of(files: dict[str, bytes]) -> bytes:
    entries = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()
    }
    return json.dumps({"version": "v2099.5.0", "files": entries}).encode()


class Lab:
    """The firmware folder, and a lab signing its version.json with the real minisign."""

    def __init__(self, folder: Path, key: KeyPair) -> None:
        self.folder = folder
        self.key = key
        folder.mkdir()
        (folder / MOTOR).write_bytes(IMAGE)

    def publish(self, manifest: bytes, signer: KeyPair | None) -> None:
        """``version.json`` = ``manifest``, signed by ``signer`` (None: no signature)."""
        (self.folder / "version.json").write_bytes(manifest)
        signature = self.folder / "version.json.minisig"
        signature.unlink(missing_ok=True)
        if signer is not None:
            shutil.move(signer.sign(self.folder / "version.json"), signature)

    def tamper(self) -> None:
        """Change the manifest after it was signed (one more file listed)."""
        document = json.loads((self.folder / "version.json").read_bytes())
        document["files"]["extra.bin"] = {"size": 1, "sha256": "0" * 64}
        (self.folder / "version.json").write_text(json.dumps(document))


def same_id_other_key(trusted: KeyPair, other: KeyPair) -> None:
    """Rewrite ``other``'s .pub so that it carries ``trusted``'s key id (another key's bytes, one id)."""
    lines = trusted.public.read_text().splitlines()
    theirs = base64.b64decode(other.public.read_text().splitlines()[1])
    ours = base64.b64decode(lines[1])
    forged = ours[:10] + theirs[10:]  # "Ed" + trusted key id, then other's 32 key bytes
    trusted.public.write_text(f"{lines[0]}\n{base64.b64encode(forged).decode()}\n")


async def test_only_a_manifest_signed_by_a_trusted_key_updates_a_board(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    new_key: Callable[..., KeyPair],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    lab_key = await asyncio.to_thread(new_key, "lab")
    stranger = await asyncio.to_thread(new_key, "stranger", trusted=False)
    lab = await asyncio.to_thread(Lab, tmp_path / "firmware", lab_key)
    good = manifest_of({MOTOR: IMAGE})
    keys_dir = lab_key.public.parent
    config = FAST_UPDATE.replace("[firmware]\n", f'[firmware]\nkeys_dir = "{keys_dir}"\n')

    async with microscope_for(tmp_path) as scope:
        daemon = await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server",
                                    str(lab.folder), config=config)  # fmt: skip
        slave = scope.master.slave(NODE)
        before = slave.running_image

        async def refused(prepare: Callable[[], None]) -> Message:
            await asyncio.to_thread(prepare)
            return await call(client, "StartOTA", "ua{sv}", NODE, {})

        def signed_then_changed() -> None:
            lab.publish(good, lab_key)
            lab.tamper()

        changed = await refused(signed_then_changed)
        untrusted = await refused(lambda: lab.publish(good, stranger))
        unsigned = await refused(lambda: lab.publish(good, None))
        not_listed = await refused(lambda: lab.publish(manifest_of({"other.bin": IMAGE}), lab_key))
        # listed with another image's sha256: the plan passes, the download is refused
        other = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
        started = await refused(lambda: lab.publish(manifest_of({MOTOR: other}), lab_key))
        mismatch = await signals.until_final()
        cached_after_refusals = await asyncio.to_thread(images_in, daemon.cache_dir)
        untouched = slave.running_image

        await asyncio.to_thread(lab.publish, good, lab_key)
        accepted = await call(client, "StartOTA", "ua{sv}", NODE, {})
        final = await signals.first(lambda status: status.get("job_id") == unwrap(accepted.body[0])["job_id"]
                                    and status["upload_status"] in ("success", "failed"))  # fmt: skip
        running = slave.running_image
        await asyncio.to_thread(same_id_other_key, lab_key, stranger)
        wrong_key = await call(client, "StartOTA", "ua{sv}", NODE, {"force": Variant("b", True)})

    for reply, words in [
        (changed, "does not match the data"),
        (untrusted, "which is not a trusted key"),
        (unsigned, "not signed"),
        (not_listed, "not listed in the signed version.json"),
        (wrong_key, "does not match the data"),
    ]:
        assert (reply.message_type, reply.error_name) == (MessageType.ERROR, names.SIGNATURE_INVALID), (
            reply.body
        )
        assert words in reply.body[0], reply.body[0]
    assert started.message_type is MessageType.METHOD_RETURN, started.body
    assert (mismatch["upload_status"], mismatch["error_code"]) == ("failed", "signature_invalid"), mismatch
    assert "signed manifest; deleted" in mismatch["upload_error"]
    assert cached_after_refusals == []  # nothing entered the cache
    assert untouched == before  # nothing reached the board
    assert final["upload_status"] == "success", final
    assert running == IMAGE


def images_in(cache_dir: Path) -> list[str]:
    """The images in the cache folder (hidden entries are its records and kept images)."""
    return sorted(path.name for path in cache_dir.glob("*") if not path.name.startswith("."))

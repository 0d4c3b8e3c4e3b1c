"""When firmware must be signed, and the check of a source's signed ``version.json`` (issue 21).

A lab signs each release's ``version.json`` with minisign (``minisign -Sm version.json`` →
``version.json.minisig`` beside it) and installs its public key in the trusted keys folder
(``firmware.keys_dir``, ``/etc/uc2otad/keys``). Signatures are enforced as soon as that folder holds a
key, or when ``firmware.require_signature`` is set (then with no key every signature is refused):

- the manifest must come with its signature, made by a trusted key (:mod:`.minisign`); the bytes
  verified are the bytes parsed, read once;
- an image the signed manifest does not list is refused before it is downloaded (:class:`Catalog`);
- an image whose size or sha256 differs from the signed manifest's is deleted before it enters the
  cache (:class:`FirmwareCache`);

each with :class:`~uc2otad.errors.SignatureInvalidError` (``signature_invalid``), before anything is
written to a board. The keys are read at every catalog fetch: a key installed or removed counts from
the next call, with no restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uc2otad.errors import SignatureInvalidError, SignatureReason
from uc2otad.firmware.manifest import MANIFEST_NAME
from uc2otad.firmware.minisign import PublicKey, load_trusted_keys, verify

#: the signature of ``version.json``, beside it (minisign's default name: the file's name + ".minisig")
SIGNATURE_NAME = MANIFEST_NAME + ".minisig"
#: the largest signature file read: minisign's is under 400 bytes, with a long trusted comment a few KiB
MAX_SIGNATURE_BYTES = 16 * 1024
DEFAULT_KEYS_DIR = Path("/etc/uc2otad/keys")


@dataclass(frozen=True)
class SigningPolicy:
    """``firmware.keys_dir`` and ``firmware.require_signature``."""

    keys_dir: Path = DEFAULT_KEYS_DIR
    required: bool = False

    def trusted_keys(self) -> list[PublicKey] | None:
        """The trusted keys when signatures are enforced, None when they are not (no key installed and
        not required). Blocking: call it in a worker thread.

        :raises SignatureInvalidError: the folder or a key in it cannot be read or parsed
        """
        if not self.keys_dir.is_dir():
            if self.required:
                return []
            return None
        keys = load_trusted_keys(self.keys_dir)
        return keys if keys or self.required else None


@dataclass(frozen=True)
class SignedManifest:
    """A ``version.json`` and its signature, verified: what the cache keeps beside an image, so that a
    rollback's image can be checked again against the keys trusted then."""

    manifest: bytes
    signature: bytes
    key_id: str
    trusted_comment: str


def check_signed(manifest: bytes | None, signature: bytes | None, keys: list[PublicKey]) -> SignedManifest:
    """``manifest`` signed by one of ``keys``.

    :raises SignatureInvalidError: no manifest, no signature, or a signature that does not verify
    """
    if manifest is None:
        raise SignatureInvalidError(
            f"signatures are required, and the source has no {MANIFEST_NAME} to sign its images",
            reason=SignatureReason.UNSIGNED,
            name=MANIFEST_NAME,
        )
    if signature is None:
        raise SignatureInvalidError(
            f"{MANIFEST_NAME} is not signed: the source has no {SIGNATURE_NAME} "
            f"(minisign -Sm {MANIFEST_NAME})",
            reason=SignatureReason.UNSIGNED,
            name=SIGNATURE_NAME,
        )
    verified = verify(manifest, signature, keys)
    return SignedManifest(manifest, signature, verified.key_id, verified.trusted_comment)

"""Check minisign signatures against the lab's trusted public keys (issue 21, signatures).

A lab signs each release's ``version.json`` with minisign (``minisign -Sm version.json`` writes
``version.json.minisig``); the public keys it trusts live in a folder (``/etc/uc2otad/keys/*.pub``). The
manifest carries every image's size and sha256 (:mod:`uc2otad.firmware.manifest`), so one good signature
on it vouches for the images it lists.

The formats, as minisign itself reads and writes them (jedisct1/minisign @ e369d9447d7d, 0.12:
``src/minisign.h`` 5-55, ``src/minisign.c`` ``sig_load`` 205-289, ``pubkey_load_string`` 291-307,
``verify`` 495-566, ``sign`` 596-663; ``src/helpers.c`` ``trim`` 158-178; its documentation,
https://jedisct1.github.io/minisign/, "Signature format". The constants of ``minisign.h`` are those of
0.11, Debian 12's program, which the tests sign with)::

    key.pub       untrusted comment: minisign public key <KEY ID>
                  base64("Ed" || key_id[8] || ed25519_public_key[32])

    file.minisig  untrusted comment: <anything>
                  base64(algorithm[2] || key_id[8] || ed25519_signature[64])
                  trusted comment: <text>
                  base64(ed25519_global_signature[64])

The algorithm "ED" (minisign's default since 0.9) signs BLAKE2b-512 of the file; "Ed" (``-l``, legacy)
signs the file itself. Both are accepted, as ``minisign -V`` accepts both unless given ``-H``. The global
signature signs ``ed25519_signature || text`` with the same key: it binds the trusted comment (minisign
puts a timestamp and the file name there) to the signature, so a check that skipped it would let anyone
rewrite that line.

Main constraint: the daemon's idle memory. ``cryptography`` (OpenSSL's Ed25519) is imported inside
:func:`verify`, on the first check, never when the daemon starts; BLAKE2b comes from :mod:`hashlib`. From
the event loop, call :func:`verify` and :func:`load_trusted_keys` through :func:`asyncio.to_thread`: the
first import, the file reads and hashing a large file all block.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from uc2otad.errors import SignatureInvalidError, SignatureReason

#: minisign.h: SIGALG (keys, legacy signatures) and SIGALG_HASHED (signatures of the BLAKE2b-512 prehash)
ALGORITHM_ED25519 = b"Ed"
ALGORITHM_PREHASHED = b"ED"
KEY_ID_BYTES = 8  # minisign.h KEYNUMBYTES
PUBLIC_KEY_BYTES = 32  # crypto_sign_PUBLICKEYBYTES
SIGNATURE_BYTES = 64  # crypto_sign_BYTES
UNTRUSTED_PREFIX = "untrusted comment: "  # minisign.h COMMENT_PREFIX
TRUSTED_PREFIX = "trusted comment: "  # minisign.h TRUSTED_COMMENT_PREFIX
#: minisign.h COMMENTMAXBYTES and TRUSTEDCOMMENTMAXBYTES: the buffers sig_load reads each line into, so
#: minisign refuses longer lines; we bound them the same way before decoding anything
UNTRUSTED_LINE_MAX = 1024
TRUSTED_LINE_MAX = 8192
#: a signature file is four lines of the sizes above: anything larger is not one
SIGNATURE_FILE_MAX = UNTRUSTED_LINE_MAX + TRUSTED_LINE_MAX + 512
#: a public key file is two lines
KEY_FILE_MAX = UNTRUSTED_LINE_MAX + 512
#: the trusted keys' file names in their folder
KEY_SUFFIX = ".pub"


@dataclass(frozen=True)
class PublicKey:
    """A minisign public key: what a ``.pub`` file (or ``minisign -P``'s base64) holds."""

    #: minisign's 8 random bytes naming the key pair, in the order they are stored
    key_id: bytes
    #: the Ed25519 public key; left out of ``repr`` so that logs and messages name keys by id only
    key: bytes = field(repr=False)

    @property
    def key_id_hex(self) -> str:
        """The key id as minisign prints it (``%016X`` of the little-endian number): what the ``.pub``
        file's comment and ``minisign -V``'s messages show, so a person can match them."""
        return key_id_hex(self.key_id)

    @classmethod
    def parse(cls, text: str | bytes) -> PublicKey:
        """Read a ``.pub`` file's text (comment line and base64 line), or the base64 line alone.

        minisign skips a ``.pub`` file's first line unread (``pubkey_load_file``, minisign.c 309-335); we
        ask for its "untrusted comment:" prefix, so that another file saved as ``*.pub`` by mistake is
        refused by name rather than half-read.

        :raises SignatureInvalidError: ``reason`` MALFORMED: not two such lines, not base64, the wrong
            length or an algorithm other than Ed25519 ("Ed")
        """
        lines = _lines(text, "public key", KEY_FILE_MAX)
        if len(lines) == 2 and lines[0].startswith(UNTRUSTED_PREFIX.rstrip()):
            encoded = lines[1]
        elif len(lines) == 1:
            encoded = lines[0]
        else:
            raise _malformed("public key: expected an 'untrusted comment:' line and a base64 line")
        raw = _base64(encoded, "public key", 2 + KEY_ID_BYTES + PUBLIC_KEY_BYTES)
        if raw[:2] != ALGORITHM_ED25519:
            raise _malformed(f"public key: unsupported algorithm {raw[:2]!r} (minisign keys are 'Ed')")
        return cls(key_id=raw[2 : 2 + KEY_ID_BYTES], key=raw[2 + KEY_ID_BYTES :])


@dataclass(frozen=True)
class Verified:
    """A signature that checked out: which trusted key made it, and what it vouches for."""

    #: the signing key's id, as minisign prints it
    key_id: str
    #: the signed metadata line (minisign's default: ``timestamp:<unix time>\\tfile:<name>\\thashed``)
    trusted_comment: str
    #: True for minisign's default ("ED", BLAKE2b-512 of the data signed), False for legacy ``-l``
    prehashed: bool


@dataclass(frozen=True)
class _Signature:
    """A parsed ``.minisig``."""

    prehashed: bool
    key_id: bytes
    signature: bytes
    trusted_comment: bytes
    global_signature: bytes


def key_id_hex(key_id: bytes) -> str:
    """minisign's spelling of a key id: ``le64_load(keynum)`` printed ``%016X`` (minisign.c 522-527, and
    the ``.pub`` comment, 724-725). minisign 0.11 printed it without the leading zeros (``%X``): the same
    number, so compare ids as numbers, not as text."""
    return key_id[::-1].hex().upper()


def load_trusted_keys(folder: Path) -> list[PublicKey]:
    """Every ``*.pub`` key in ``folder``, in file-name order.

    A key file that cannot be read or parsed is an error naming it, never skipped: a key silently left
    out would make the lab's good signatures fail for a reason nobody could see, and a folder read as
    "no keys" must be told apart from a folder that cannot be read. An empty folder gives an empty list
    (then every signature is refused as by an unknown key).

    :raises SignatureInvalidError: ``reason`` KEY_UNREADABLE (``name`` the folder or file) when the
        folder or a key file cannot be read; MALFORMED (``name`` the file) when a key file is not a
        minisign public key
    """
    try:
        paths = sorted(path for path in folder.iterdir() if path.name.endswith(KEY_SUFFIX))
    except OSError as err:
        raise SignatureInvalidError(
            f"trusted keys: cannot read the folder {folder}: {err.strerror or err}",
            reason=SignatureReason.KEY_UNREADABLE,
            name=str(folder),
        ) from err
    keys = []
    for path in paths:
        try:
            with path.open("rb") as file:
                text = file.read(KEY_FILE_MAX + 1)
        except OSError as err:
            raise SignatureInvalidError(
                f"trusted key {path}: cannot read it: {err.strerror or err}",
                reason=SignatureReason.KEY_UNREADABLE,
                name=str(path),
            ) from err
        try:
            keys.append(PublicKey.parse(text))
        except SignatureInvalidError as err:
            raise SignatureInvalidError(
                f"trusted key {path}: {err}", reason=SignatureReason.MALFORMED, name=str(path)
            ) from err
    return keys


def verify(data: bytes, signature: bytes | str, keys: Sequence[PublicKey]) -> Verified:
    """Check that ``signature`` (a ``.minisig`` file's content) signs ``data`` with one of ``keys``.

    Checks in minisign's order (``verify``, minisign.c 495-566): the file's format, a trusted key with
    the signature's key id, the signature of the data, then the global signature of the trusted comment.
    Keys sharing the signature's id are each tried (a copy of a key under two names is harmless).

    :param data: the signed file's bytes, exactly as received
    :param signature: the ``.minisig`` text
    :param keys: the trusted keys (:func:`load_trusted_keys`)
    :returns: the signing key's id and the trusted comment
    :raises SignatureInvalidError: with ``reason`` MALFORMED (not a minisign signature, or a trusted
        key that is not an Ed25519 point), UNKNOWN_KEY (no trusted key has its key id), BAD_SIGNATURE
        (the data changed, or a key with the same id but other bytes), BAD_TRUSTED_COMMENT (the data's
        signature is good, the trusted comment's is not)
    """
    # lazy: the daemon must not pay for OpenSSL's bindings while idle (module docstring)
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    parsed = _parse_signature(signature)
    key_id = key_id_hex(parsed.key_id)
    candidates = [key for key in keys if key.key_id == parsed.key_id]
    if not candidates:
        trusted = ", ".join(key.key_id_hex for key in keys) or "none"
        raise SignatureInvalidError(
            f"signature: signed by key id {key_id}, which is not a trusted key (trusted: {trusted})",
            reason=SignatureReason.UNKNOWN_KEY,
            key_id=key_id,
        )
    # minisign.c message_load_hashed 127-152: crypto_generichash with BYTES_MAX, unkeyed = BLAKE2b-512
    message = hashlib.blake2b(data, digest_size=64).digest() if parsed.prehashed else data
    for candidate in candidates:
        try:
            public_key = Ed25519PublicKey.from_public_bytes(candidate.key)
        except ValueError as err:
            raise SignatureInvalidError(
                f"trusted key {key_id}: not a valid Ed25519 public key",
                reason=SignatureReason.MALFORMED,
                key_id=key_id,
            ) from err
        try:
            public_key.verify(parsed.signature, message)
        except InvalidSignature:
            continue
        try:
            public_key.verify(parsed.global_signature, parsed.signature + parsed.trusted_comment)
        except InvalidSignature as err:
            raise SignatureInvalidError(
                f"signature: the trusted comment's signature by key id {key_id} does not match: "
                "the comment was changed after signing",
                reason=SignatureReason.BAD_TRUSTED_COMMENT,
                key_id=key_id,
            ) from err
        return Verified(
            key_id=key_id,
            trusted_comment=parsed.trusted_comment.decode("utf-8"),
            prehashed=parsed.prehashed,
        )
    raise SignatureInvalidError(
        f"signature: does not match the data for trusted key id {key_id}: the data changed after "
        "signing, or it was signed by another key with the same id",
        reason=SignatureReason.BAD_SIGNATURE,
        key_id=key_id,
    )


def _parse_signature(text: bytes | str) -> _Signature:
    """The four lines of a ``.minisig``, checked as ``sig_load`` checks them (minisign.c 205-289)."""
    lines = _lines(text, "signature", SIGNATURE_FILE_MAX)
    if len(lines) != 4:
        raise _malformed(f"signature: expected 4 lines, found {len(lines)}")
    untrusted, encoded, trusted, encoded_global = lines
    if not untrusted.startswith(UNTRUSTED_PREFIX) or len(untrusted) >= UNTRUSTED_LINE_MAX:
        raise _malformed(f"signature: the first line must start with {UNTRUSTED_PREFIX!r} (at most 1 KiB)")
    if not trusted.startswith(TRUSTED_PREFIX) or len(trusted) >= TRUSTED_LINE_MAX:
        raise _malformed(f"signature: the third line must start with {TRUSTED_PREFIX!r} (at most 8 KiB)")
    comment = trusted[len(TRUSTED_PREFIX) :]
    # minisign.c sig_load 256-258, is_printable 75-125: tab, printable ASCII and UTF-8, no C0/C1 controls
    if any(char != "\t" and (char < " " or "\x7f" <= char <= "\x9f") for char in comment):
        raise _malformed("signature: the trusted comment contains control characters")
    raw = _base64(encoded, "signature", 2 + KEY_ID_BYTES + SIGNATURE_BYTES)
    if raw[:2] == ALGORITHM_PREHASHED:
        prehashed = True
    elif raw[:2] == ALGORITHM_ED25519:
        prehashed = False
    else:
        raise _malformed(f"signature: unsupported algorithm {raw[:2]!r} (minisign writes 'ED' or 'Ed')")
    return _Signature(
        prehashed=prehashed,
        key_id=raw[2 : 2 + KEY_ID_BYTES],
        signature=raw[2 + KEY_ID_BYTES :],
        trusted_comment=comment.encode("utf-8"),
        global_signature=_base64(encoded_global, "global signature", SIGNATURE_BYTES),
    )


def _lines(text: bytes | str, what: str, limit: int) -> list[str]:
    """``text`` as lines without their ``\\n`` or ``\\r\\n`` (minisign's ``trim``), trailing empty
    lines dropped; bounded before anything is decoded."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    if len(text) > limit:
        raise _malformed(f"{what}: larger than {limit} bytes")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _malformed(f"{what}: not UTF-8 text") from err
    lines = decoded.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if any("\r" in line for line in lines):  # helpers.c trim: a \r inside a line is refused
        raise _malformed(f"{what}: a carriage return inside a line")
    return lines


def _base64(encoded: str, what: str, size: int) -> bytes:
    """Strict base64 (``b64_to_bin``: no whitespace, padding as the length asks) of exactly ``size``."""
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as err:
        raise _malformed(f"{what}: not base64") from err
    if len(raw) != size:
        raise _malformed(f"{what}: {len(raw)} bytes, a minisign {what} has {size}")
    return raw


def _malformed(message: str) -> SignatureInvalidError:
    return SignatureInvalidError(message, reason=SignatureReason.MALFORMED)

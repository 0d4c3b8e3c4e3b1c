"""The board's half of ArduinoOTA authentication: nonce, stored password hash, expected response.

Written from ``arduino-ota.md`` §2 alone, never from the uploader's code, so that a misreading of the
protocol cannot hide on both sides of a test. Two generations of the Arduino-ESP32 core:

- MD5 (cores up to 3.3.0, D-2x/D-3x): 32-hex nonce, ``MD5(stored:nonce:cnonce)``, stored = MD5 hex of
  the password (``setPassword``);
- PBKDF2 (cores from 3.3.1, derived in §2b from the host that must work with them): 64-hex nonce,
  ``SHA256(PBKDF2-HMAC-SHA256(stored, nonce:cnonce, 10000, 32).hex():nonce:cnonce)``, stored = SHA-256
  hex of the password (``setPassword``) or an MD5 hex given by the sketch (``setPasswordHash``).

The board checks only the lengths of the client nonce and of the response (32 or 64), never how the
client nonce was made. So an old host's MD5 answer to a new board fails the length check, and the board
falls back to IDLE without a word (§2a "auth param fail").
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

#: iterations and key length of the PBKDF2 step (§2b)
PBKDF2_ITERATIONS = 10_000
PBKDF2_KEY_LEN = 32


class BoardAuth(StrEnum):
    """Which core generation's authentication the board runs."""

    MD5 = "md5"
    PBKDF2 = "pbkdf2"


def field_length(auth: BoardAuth) -> int:
    """Length in hex characters of the nonce, the client nonce and the response."""
    return 32 if auth is BoardAuth.MD5 else 64


def stored_password(auth: BoardAuth, password: str, *, md5_hash: bool = False) -> str:
    """What the board keeps in ``_password``.

    :param md5_hash: the sketch calls ``setPasswordHash(<MD5 hex of the password>)`` rather than
        ``setPassword`` (on an MD5 board both store the MD5 hex)
    """
    if auth is BoardAuth.MD5 or md5_hash:
        return _md5_hex(password)
    return _sha256_hex(password)


def new_nonce(auth: BoardAuth, micros: int) -> str:
    """The challenge: a hash of the board's microsecond clock in decimal (D-3x ``String(micros())``)."""
    text = str(micros)
    return _md5_hex(text) if auth is BoardAuth.MD5 else _sha256_hex(text)


def expected_response(auth: BoardAuth, stored: str, nonce: str, cnonce: str) -> str:
    """The response the board accepts. PBKDF2 takes milliseconds: call it from a worker thread.

    ``cnonce`` is the datagram's bytes as Latin-1 text (one character per byte), so it hashes back to
    exactly the bytes the board received, as the firmware's byte-wise ``String`` does.
    """
    if auth is BoardAuth.MD5:
        return _md5_hex(f"{stored}:{nonce}:{cnonce}", "latin-1")
    key = hashlib.pbkdf2_hmac(
        "sha256",
        stored.encode("latin-1"),
        f"{nonce}:{cnonce}".encode("latin-1"),
        PBKDF2_ITERATIONS,
        PBKDF2_KEY_LEN,
    )
    return _sha256_hex(f"{key.hex()}:{nonce}:{cnonce}", "latin-1")


def _md5_hex(text: str, encoding: str = "utf-8") -> str:
    return hashlib.md5(text.encode(encoding), usedforsecurity=False).hexdigest()


def _sha256_hex(text: str, encoding: str = "utf-8") -> str:
    return hashlib.sha256(text.encode(encoding)).hexdigest()

"""The host's half of ArduinoOTA authentication: what to answer to a board's ``AUTH <nonce>``.

Written from ``arduino-ota.md`` §2. There is no version field in the protocol: the length of the nonce
alone tells which scheme the board runs (32 hex characters: legacy MD5, cores up to 3.3.0; 64: PBKDF2-HMAC-
SHA256, cores from 3.3.1). A new-scheme board may store its password as a SHA-256 hash (``setPassword``)
or as an MD5 hash (``setPasswordHash``), and it cannot tell us which, so a host tries SHA-256 first and
falls back to MD5 on a fresh invitation.

Main constraint: pure functions of their inputs, so the spec's test vectors check them exactly. The
password is an argument here and goes nowhere else; nothing in this module logs.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

#: the command number of the authentication datagram (``U_AUTH``, arduino-ota.md §2)
AUTH_COMMAND = 200
#: PBKDF2 iterations of cores >= 3.3.1 (H-331; arduino-ota.md §2b)
PBKDF2_ITERATIONS = 10_000
#: PBKDF2 output length in bytes (H-331 ``dklen=32``)
PBKDF2_KEY_LEN = 32
#: nonce lengths in hex characters: MD5 hex (legacy) and SHA-256 hex (PBKDF2) (arduino-ota.md §2a, §2b)
LEGACY_NONCE_LEN = 32
PBKDF2_NONCE_LEN = 64


class AuthScheme(StrEnum):
    """How a response is computed; the PBKDF2 schemes differ only in how the password was hashed."""

    #: legacy, cores <= 3.3.0: ``MD5(MD5(password):nonce:cnonce)``
    MD5 = "md5"
    #: cores >= 3.3.1 with ``setPassword``: PBKDF2 keyed by the SHA-256 hex of the password
    PBKDF2_SHA256 = "pbkdf2-sha256"
    #: cores >= 3.3.1 with ``setPasswordHash(<md5 hex>)``: PBKDF2 keyed by the MD5 hex of the password
    PBKDF2_MD5 = "pbkdf2-md5"


def schemes_for_nonce(nonce: str) -> tuple[AuthScheme, ...]:
    """The schemes a board that sent ``nonce`` may use, to be tried in this order; () if none fits.

    Only the length and the hex alphabet are looked at: that is all the board's reply tells.
    """
    if not _is_hex(nonce):
        return ()
    if len(nonce) == LEGACY_NONCE_LEN:
        return (AuthScheme.MD5,)
    if len(nonce) == PBKDF2_NONCE_LEN:
        return (AuthScheme.PBKDF2_SHA256, AuthScheme.PBKDF2_MD5)
    return ()


def cnonce_text(filename: str, size: int, md5_hex: str, board_address: str) -> str:
    """What the client nonce is hashed from: file name as given, size, image MD5 and board address.

    The board never recomputes it (it checks only the length), so any text would do; espota's recipe is
    kept so that our datagrams are the ones the spec's vectors describe.
    """
    return f"{filename}{size}{md5_hex}{board_address}"


def auth_datagram(scheme: AuthScheme, password: str, nonce: str, cnonce_source: str) -> bytes:
    """The second datagram: ``b"200 <cnonce> <response>\\n"`` for ``scheme``.

    PBKDF2 costs a few milliseconds: call this from a worker thread, not the event loop.

    :param password: the OTA password in plain text (UTF-8 without BOM, arduino-ota.md §4.9)
    :param nonce: the board's nonce from ``AUTH <nonce>``
    :param cnonce_source: :func:`cnonce_text` of this upload
    """
    if scheme is AuthScheme.MD5:
        cnonce = _md5_hex(cnonce_source)
        response = legacy_response(_md5_hex(password), nonce, cnonce)
    else:
        cnonce = _sha256_hex(cnonce_source)
        password_hash = _sha256_hex(password) if scheme is AuthScheme.PBKDF2_SHA256 else _md5_hex(password)
        response = pbkdf2_response(password_hash, nonce, cnonce)
    return f"{AUTH_COMMAND} {cnonce} {response}\n".encode("ascii")


def legacy_response(password_hash: str, nonce: str, cnonce: str) -> str:
    """``MD5hex(password_hash:nonce:cnonce)``, where ``password_hash`` is the MD5 hex of the password."""
    return _md5_hex(f"{password_hash}:{nonce}:{cnonce}")


def pbkdf2_response(password_hash: str, nonce: str, cnonce: str) -> str:
    """``SHA256hex(PBKDF2(password_hash, nonce:cnonce).hex():nonce:cnonce)`` (arduino-ota.md §2b).

    The PBKDF2 password is the hex *text* of the hash, not its raw bytes (§4.11).
    """
    key = hashlib.pbkdf2_hmac(
        "sha256",
        password_hash.encode("ascii"),
        f"{nonce}:{cnonce}".encode("ascii"),
        PBKDF2_ITERATIONS,
        PBKDF2_KEY_LEN,
    )
    return _sha256_hex(f"{key.hex()}:{nonce}:{cnonce}")


def _md5_hex(text: str) -> str:
    # the protocol prescribes MD5; usedforsecurity=False keeps FIPS hosts working
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_hex(text: str) -> bool:
    return bool(text) and all(char in "0123456789abcdefABCDEF" for char in text)

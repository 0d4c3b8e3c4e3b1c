"""The pure protocol pieces of ArduinoOTA, on both sides: authentication against the spec's vectors,
and the uploader's reading of the board's unframed ack stream.

The host's auth (``uc2otad.methods.arduino_ota.auth``) and the board simulator's (``uc2otad.sim.ota_auth``)
are separate code written from the same spec; both must reproduce arduino-ota.md §2 exactly.
"""

from __future__ import annotations

import hashlib

import pytest

from uc2otad.methods.arduino_ota.auth import AuthScheme, auth_datagram, cnonce_text, schemes_for_nonce
from uc2otad.methods.arduino_ota.replies import BoardReplyParser, FinalReply, ReplyKind
from uc2otad.sim.ota_auth import BoardAuth, expected_response, field_length, stored_password

# --------------------------------------------------------------------------- arduino-ota.md §2 vectors

PASSWORD = "admin"
CNONCE_TEXT = cnonce_text("firmware.bin", 1048576, "0123456789abcdef0123456789abcdef", "192.168.1.50")
MD5_NONCE = hashlib.md5(b"123456789").hexdigest()
SHA256_NONCE = hashlib.sha256(b"123456789").hexdigest()

MD5_VECTOR = b"200 412aad2c9e62b543158eb711afbac5c2 2266eb54b73239d441a5d702b4e71907\n"
SHA256_CNONCE = "b6f79d70fec18c615efc30a5c50771c93a580f2bd76965461412698e689a04d8"
SHA256_PASSWORD_RESPONSE = "862699718e7b04e0012c6ec29e633b8e3437f2a6a13b8f05dc8363fc1304480c"
MD5_PASSWORD_IN_PBKDF2_RESPONSE = "3b0f65b5120a264a0491a5ad3ab3bf0cd827982df2a61eff1f9a9dc75e4dbdf9"


def test_vector_nonces_are_the_specs() -> None:
    assert MD5_NONCE == "25f9e794323b453885f5181f1b624d0b"
    assert SHA256_NONCE == "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"


@pytest.mark.parametrize(
    ("scheme", "nonce", "datagram"),
    [
        (AuthScheme.MD5, MD5_NONCE, MD5_VECTOR),
        (
            AuthScheme.PBKDF2_SHA256,
            SHA256_NONCE,
            f"200 {SHA256_CNONCE} {SHA256_PASSWORD_RESPONSE}\n".encode(),
        ),
        (
            AuthScheme.PBKDF2_MD5,
            SHA256_NONCE,
            f"200 {SHA256_CNONCE} {MD5_PASSWORD_IN_PBKDF2_RESPONSE}\n".encode(),
        ),
    ],
)
def test_host_answer_reproduces_the_spec_vector(scheme: AuthScheme, nonce: str, datagram: bytes) -> None:
    assert auth_datagram(scheme, PASSWORD, nonce, CNONCE_TEXT) == datagram


@pytest.mark.parametrize(
    ("auth", "md5_hash", "nonce", "cnonce", "response"),
    [
        (
            BoardAuth.MD5,
            False,
            MD5_NONCE,
            "412aad2c9e62b543158eb711afbac5c2",
            "2266eb54b73239d441a5d702b4e71907",
        ),
        (BoardAuth.PBKDF2, False, SHA256_NONCE, SHA256_CNONCE, SHA256_PASSWORD_RESPONSE),
        (BoardAuth.PBKDF2, True, SHA256_NONCE, SHA256_CNONCE, MD5_PASSWORD_IN_PBKDF2_RESPONSE),
    ],
)
def test_board_expects_the_spec_vector(
    auth: BoardAuth, md5_hash: bool, nonce: str, cnonce: str, response: str
) -> None:
    stored = stored_password(auth, PASSWORD, md5_hash=md5_hash)

    assert expected_response(auth, stored, nonce, cnonce) == response
    assert len(cnonce) == len(response) == field_length(auth)


def test_stored_password_hashes_are_the_specs() -> None:
    assert stored_password(BoardAuth.MD5, PASSWORD) == "21232f297a57a5a743894a0e4a801fc3"
    assert stored_password(BoardAuth.PBKDF2, PASSWORD) == (
        "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"
    )


def test_password_is_utf8_without_bom() -> None:
    """espota 2.x hashed a BOM into the password (arduino-ota.md §4.9); a non-ASCII one shows it."""
    nonce = MD5_NONCE
    datagram = auth_datagram(AuthScheme.MD5, "pässwort", nonce, CNONCE_TEXT)
    stored = stored_password(BoardAuth.MD5, "pässwort")
    _, cnonce, response = datagram.decode().split()

    assert stored == hashlib.md5("pässwort".encode()).hexdigest()
    assert response == expected_response(BoardAuth.MD5, stored, nonce, cnonce)


@pytest.mark.parametrize(
    ("nonce", "schemes"),
    [
        ("a" * 32, (AuthScheme.MD5,)),
        ("A" * 64, (AuthScheme.PBKDF2_SHA256, AuthScheme.PBKDF2_MD5)),
        ("a" * 33, ()),
        ("g" * 32, ()),
        ("", ()),
    ],
)
def test_nonce_length_alone_selects_the_scheme(nonce: str, schemes: tuple[AuthScheme, ...]) -> None:
    assert schemes_for_nonce(nonce) == schemes


# --------------------------------------------------------------------------- the ack stream


def parse(*pieces: bytes, closed: bool = False) -> FinalReply | None:
    parser = BoardReplyParser()
    for piece in pieces:
        reply = parser.feed(piece)
        if reply is not None:
            return reply
    return parser.close() if closed else None


@pytest.mark.parametrize(
    "pieces",
    [
        (b"1460", b"1460", b"1176", b"OK"),
        (b"14601460", b"1176OK"),  # coalesced acks, and OK glued to the last one
        (b"146", b"01460117", b"6O", b"K"),  # split anywhere, even inside "OK"
        (b"1024" * 3, b"1024OK"),  # repeated acks after an idle second
    ],
)
def test_ok_ends_the_stream_however_tcp_cut_it(pieces: tuple[bytes, ...]) -> None:
    assert parse(*pieces) == FinalReply(ReplyKind.OK, "OK")


@pytest.mark.parametrize(
    "pieces",
    [
        (b"146014604096MD5 Check Failed\r\n",),
        (b"1460", b"MD5 Che", b"ck Failed\r", b"\n"),
    ],
)
def test_error_text_with_digits_is_not_taken_for_acks(pieces: tuple[bytes, ...]) -> None:
    """ "MD5" holds a digit: only the digits before the first letter are acks."""
    assert parse(*pieces) == FinalReply(ReplyKind.ERROR, "MD5 Check Failed")


def test_acks_then_close_is_a_close_without_words() -> None:
    assert parse(b"1460", b"1460", closed=True) == FinalReply(ReplyKind.CLOSED)


def test_unfinished_error_text_at_close_is_the_boards_word() -> None:
    assert parse(b"1460Wrong Magic", closed=True) == FinalReply(ReplyKind.ERROR, "Wrong Magic")


def test_acks_alone_never_end_the_stream() -> None:
    assert parse(b"1460" * 1000) is None


def test_endless_text_is_cut() -> None:
    reply = parse(b"X" * 10_000)

    assert reply is not None and reply.kind is ReplyKind.ERROR and len(reply.text) <= 256

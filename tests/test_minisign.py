"""minisign signatures (issue 21), checked against files the real minisign program writes.

Every signature and key here comes from ``minisign`` itself (Debian's package), in its default mode
(prehashed, "ED") and its legacy mode (``-l``, "Ed"). Where we refuse a signature, the program is asked
too (``minisign -V``), so our verdict is shown to be minisign's and not only our reading of the format.
The program runs in plain (not async) tests: blockbuster only guards an event loop's thread.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from uc2otad.api import names
from uc2otad.api.errors import to_dbus_error
from uc2otad.contract import ErrorCode
from uc2otad.engine.status import ERROR_ROWS
from uc2otad.errors import FirmwareError, SignatureInvalidError, SignatureReason
from uc2otad.firmware.minisign import PublicKey, Verified, load_trusted_keys, verify

MANIFEST = b'{"version": "v2026.2.0", "files": {}}\n'


@pytest.fixture(scope="module")
def program() -> Iterator[str]:
    """The minisign program: missing, its tests skip locally and fail in CI (scripts/bootstrap installs
    the Debian package ``minisign``)."""
    found = shutil.which("minisign")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("minisign is not on PATH; scripts/bootstrap must install the minisign package")
        pytest.skip("minisign not on PATH (apt-get install minisign)")
    yield found


@dataclass(frozen=True)
class KeyPair:
    """A key pair made by ``minisign -G``, and signing with it as a lab would."""

    program: str
    public: Path
    secret: Path

    def sign(self, message: Path, *, legacy: bool = False, trusted_comment: str | None = None) -> Path:
        """``minisign -S``; returns the ``.minisig`` path."""
        signature = message.with_name(f"{message.name}.{self.secret.stem}.minisig")
        command = [self.program, "-S", "-s", str(self.secret), "-m", str(message), "-x", str(signature)]
        command += ["-l"] if legacy else []
        command += ["-t", trusted_comment] if trusted_comment is not None else []
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        return signature

    def accepts(self, message: Path, signature: Path, public: Path | None = None) -> bool:
        """``minisign -V``'s own verdict on ``signature`` with this key (or another ``.pub``)."""
        command = [self.program, "-V", "-p", str(public or self.public), "-m", str(message)]
        command += ["-x", str(signature)]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    @property
    def key_id(self) -> str:
        """The key id from the ``.pub`` file's comment, as minisign wrote it there: 0.12 pads it to 16
        digits (``%016`` PRIX64), 0.11 (Debian 12) does not (``%`` PRIX64, minisign.c @0.11 665)."""
        return f"{int(self.public.read_text().splitlines()[0].rsplit(' ', 1)[1], 16):016X}"


@pytest.fixture
def new_key(program: str, tmp_path: Path) -> Callable[..., KeyPair]:
    """Makes key pairs without a password (``-W``): ``<name>.pub`` in ``keys/`` (the trusted folder),
    or in ``untrusted/`` with ``trusted=False``; the secret key beside them."""
    for folder in ("keys", "untrusted"):
        (tmp_path / folder).mkdir()

    def make(name: str, *, trusted: bool = True) -> KeyPair:
        public = tmp_path / ("keys" if trusted else "untrusted") / f"{name}.pub"
        pair = KeyPair(program, public, tmp_path / f"{name}.key")
        command = [program, "-G", "-W", "-p", str(pair.public), "-s", str(pair.secret)]
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        return pair

    return make


@pytest.fixture
def lab(new_key: Callable[..., KeyPair]) -> KeyPair:
    return new_key("lab")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "version.json"
    path.write_bytes(MANIFEST)
    return path


def refused(data: bytes, signature: bytes | str, keys: list[PublicKey]) -> SignatureInvalidError:
    with pytest.raises(SignatureInvalidError) as caught:
        verify(data, signature, keys)
    return caught.value


MODES = pytest.mark.parametrize("legacy", [False, True], ids=["prehashed", "legacy"])


@MODES
def test_a_good_signature_is_accepted(lab: KeyPair, manifest: Path, legacy: bool) -> None:
    signature = lab.sign(manifest, legacy=legacy, trusted_comment="release v2026.2.0\tfile:version.json")
    keys = load_trusted_keys(lab.public.parent)
    assert verify(MANIFEST, signature.read_text(), keys) == Verified(
        key_id=lab.key_id, trusted_comment="release v2026.2.0\tfile:version.json", prehashed=not legacy
    )
    assert verify(MANIFEST, signature.read_bytes(), keys).key_id == lab.key_id  # bytes as str


def test_the_default_trusted_comment_is_returned(lab: KeyPair, manifest: Path) -> None:
    """minisign's own trusted comment: the time of signing and the file's name, and "hashed"."""
    verified = verify(MANIFEST, lab.sign(manifest).read_text(), load_trusted_keys(lab.public.parent))
    fields = verified.trusted_comment.split("\t")
    assert fields[0].startswith("timestamp:") and fields[0].removeprefix("timestamp:").isdigit()
    assert fields[1:] == ["file:version.json", "hashed"]


def test_crlf_line_ends_are_accepted(lab: KeyPair, manifest: Path) -> None:
    """A signature file that went through a Windows editor or server: minisign's trim drops the \\r."""
    signature = lab.sign(manifest).read_text().replace("\n", "\r\n")
    assert verify(MANIFEST, signature, load_trusted_keys(lab.public.parent)).key_id == lab.key_id


@MODES
def test_a_changed_file_is_refused(lab: KeyPair, manifest: Path, legacy: bool) -> None:
    signature = lab.sign(manifest, legacy=legacy)
    manifest.write_bytes(MANIFEST.replace(b"v2026.2.0", b"v2026.9.9"))
    error = refused(manifest.read_bytes(), signature.read_text(), load_trusted_keys(lab.public.parent))
    assert error.reason is SignatureReason.BAD_SIGNATURE
    assert error.key_id == lab.key_id
    assert lab.key_id in str(error)
    assert not lab.accepts(manifest, signature)


def test_a_signature_by_a_key_not_trusted_is_refused(
    lab: KeyPair, new_key: Callable[..., KeyPair], manifest: Path
) -> None:
    stranger = new_key("stranger", trusted=False)
    signature = stranger.sign(manifest)
    error = refused(MANIFEST, signature.read_text(), load_trusted_keys(lab.public.parent))
    assert error.reason is SignatureReason.UNKNOWN_KEY
    assert error.key_id == stranger.key_id
    assert f"key id {stranger.key_id}" in str(error)
    assert f"trusted: {lab.key_id}" in str(error)
    assert not lab.accepts(manifest, signature)
    assert refused(MANIFEST, signature.read_text(), []).reason is SignatureReason.UNKNOWN_KEY


def test_a_wrong_key_with_the_trusted_key_id_is_refused(
    lab: KeyPair, new_key: Callable[..., KeyPair], manifest: Path, tmp_path: Path
) -> None:
    """A ``.pub`` with the lab's key id but other key bytes (here another real key's): the id only
    picks the key, it proves nothing."""
    other = new_key("other")
    signature = lab.sign(manifest)
    lab_raw = base64.b64decode(lab.public.read_text().splitlines()[1])
    other_raw = base64.b64decode(other.public.read_text().splitlines()[1])
    forged = tmp_path / "forged" / "lab.pub"
    forged.parent.mkdir()
    comment = lab.public.read_text().splitlines()[0]
    forged.write_text(f"{comment}\n{base64.b64encode(lab_raw[:10] + other_raw[10:]).decode()}\n")
    keys = load_trusted_keys(forged.parent)
    assert [key.key_id_hex for key in keys] == [lab.key_id]
    error = refused(MANIFEST, signature.read_text(), keys)
    assert error.reason is SignatureReason.BAD_SIGNATURE
    assert error.key_id == lab.key_id
    assert not lab.accepts(manifest, signature, public=forged)


@MODES
def test_a_tampered_trusted_comment_is_refused(lab: KeyPair, manifest: Path, legacy: bool) -> None:
    signature = lab.sign(manifest, legacy=legacy, trusted_comment="release v2026.2.0")
    lines = signature.read_text().splitlines()
    lines[2] = "trusted comment: release v2026.3.0"
    signature.write_text("\n".join(lines) + "\n")
    error = refused(MANIFEST, signature.read_text(), load_trusted_keys(lab.public.parent))
    assert error.reason is SignatureReason.BAD_TRUSTED_COMMENT
    assert error.key_id == lab.key_id
    assert not lab.accepts(manifest, signature)


def test_the_untrusted_comment_may_change(lab: KeyPair, manifest: Path) -> None:
    """It is not signed (its name says so): minisign lets anyone rewrite it, and so do we."""
    signature = lab.sign(manifest)
    lines = signature.read_text().splitlines()
    lines[0] = "untrusted comment: rewritten by the server"
    signature.write_text("\n".join(lines) + "\n")
    assert lab.accepts(manifest, signature)
    assert verify(MANIFEST, signature.read_text(), load_trusted_keys(lab.public.parent)).key_id == lab.key_id


def _with_line(index: int, text: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [text if number == index else line for number, line in enumerate(lines)]


def _reencoded(index: int, change: Callable[[bytes], bytes]) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        raw = change(base64.b64decode(lines[index]))
        return _with_line(index, base64.b64encode(raw).decode())(lines)

    return edit


MALFORMED_SIGNATURES: dict[str, Callable[[list[str]], list[str]]] = {
    "empty": lambda lines: [],
    "three lines": lambda lines: lines[:3],
    "five lines": lambda lines: [*lines, "untrusted comment: more"],
    "no untrusted comment prefix": lambda lines: [lines[0].removeprefix("untrusted "), *lines[1:]],
    "no trusted comment prefix": _with_line(2, "comment: release"),
    "not base64": _with_line(1, "this is not base64!"),
    "base64 with a space": lambda lines: _with_line(1, lines[1][:20] + " " + lines[1][20:])(lines),
    "signature too short": _reencoded(1, lambda raw: raw[:-1]),
    "signature too long": _reencoded(1, lambda raw: raw + b"\0"),
    "unknown algorithm": _reencoded(1, lambda raw: b"EX" + raw[2:]),
    "global signature too short": _reencoded(3, lambda raw: raw[:32]),
    "control character in the trusted comment": _with_line(2, "trusted comment: release\x1b[2J"),
    "C1 control in the trusted comment": _with_line(2, "trusted comment: release\x85"),
    "carriage return inside a line": _with_line(2, "trusted comment: release\rv2"),
    "trusted comment too long": _with_line(2, "trusted comment: " + "x" * 8192),
}


@pytest.mark.parametrize("edit", MALFORMED_SIGNATURES.values(), ids=MALFORMED_SIGNATURES.keys())
def test_malformed_signatures_are_refused(
    lab: KeyPair, manifest: Path, edit: Callable[[list[str]], list[str]]
) -> None:
    lines = lab.sign(manifest).read_text().splitlines()
    text = "\n".join(edit(lines)) + "\n"
    error = refused(MANIFEST, text, load_trusted_keys(lab.public.parent))
    assert error.reason is SignatureReason.MALFORMED
    assert error.key_id is None


def test_a_signature_that_is_not_text_is_refused(lab: KeyPair, manifest: Path) -> None:
    keys = load_trusted_keys(lab.public.parent)
    assert refused(MANIFEST, b"\xff\xfe" + lab.sign(manifest).read_bytes(), keys).reason == "malformed"
    assert refused(MANIFEST, b"untrusted comment: " + b"x" * 100_000, keys).reason == "malformed"


MALFORMED_KEYS = {
    "empty": "",
    "comment only": "untrusted comment: minisign public key 0000000000000000\n",
    "three lines": "untrusted comment: a\nRWQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nmore\n",
    "no comment prefix": "comment: a\nRWQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    "not base64": "untrusted comment: a\nnot base64 at all\n",
    "too short": "untrusted comment: a\n" + base64.b64encode(b"Ed" + bytes(39)).decode() + "\n",
    "a signature's algorithm": "untrusted comment: a\n" + base64.b64encode(b"ED" + bytes(40)).decode() + "\n",
}


@pytest.mark.parametrize("text", MALFORMED_KEYS.values(), ids=MALFORMED_KEYS.keys())
def test_malformed_public_keys_are_refused(text: str) -> None:
    with pytest.raises(SignatureInvalidError) as caught:
        PublicKey.parse(text)
    assert caught.value.reason is SignatureReason.MALFORMED


def test_a_public_key_parses_from_its_file_or_its_base64_line(lab: KeyPair) -> None:
    """``minisign -P`` takes the base64 line alone; both spellings are the same key."""
    text = lab.public.read_text()
    key = PublicKey.parse(text)
    assert key == PublicKey.parse(text.splitlines()[1]) == PublicKey.parse(text.encode())
    assert key.key_id_hex == lab.key_id
    assert len(key.key) == 32
    assert text.splitlines()[1] not in repr(key)
    assert repr(key.key) not in repr(key)  # logs name a key by its id only


def test_load_trusted_keys_reads_every_pub_file(
    lab: KeyPair, new_key: Callable[..., KeyPair], manifest: Path
) -> None:
    second = new_key("second")
    (lab.public.parent / "README").write_text("not a key: only *.pub files are read\n")
    keys = load_trusted_keys(lab.public.parent)
    assert [key.key_id_hex for key in keys] == [lab.key_id, second.key_id]  # by file name
    assert verify(MANIFEST, lab.sign(manifest).read_text(), keys).key_id == lab.key_id
    assert verify(MANIFEST, second.sign(manifest).read_text(), keys).key_id == second.key_id


def test_load_trusted_keys_refuses_a_malformed_key_naming_it(
    lab: KeyPair, new_key: Callable[..., KeyPair]
) -> None:
    new_key("second")
    broken = lab.public.parent / "broken.pub"
    broken.write_text("untrusted comment: minisign public key\nRWQ-truncated\n")
    with pytest.raises(SignatureInvalidError) as caught:
        load_trusted_keys(lab.public.parent)
    assert caught.value.reason is SignatureReason.MALFORMED
    assert caught.value.name == str(broken)
    assert str(broken) in str(caught.value)


def test_load_trusted_keys_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    """A missing folder and an unreadable key file are errors naming them, never "no keys"."""
    with pytest.raises(SignatureInvalidError) as caught:
        load_trusted_keys(tmp_path / "missing")
    assert caught.value.reason is SignatureReason.KEY_UNREADABLE
    assert caught.value.name == str(tmp_path / "missing")
    (tmp_path / "keys").mkdir()
    assert load_trusted_keys(tmp_path / "keys") == []
    (tmp_path / "keys" / "folder.pub").mkdir()  # open() fails even for root
    with pytest.raises(SignatureInvalidError) as caught:
        load_trusted_keys(tmp_path / "keys")
    assert caught.value.reason is SignatureReason.KEY_UNREADABLE
    assert caught.value.name == str(tmp_path / "keys" / "folder.pub")
    assert str(tmp_path / "keys" / "folder.pub") in str(caught.value)


def test_messages_name_keys_by_id_only(lab: KeyPair, new_key: Callable[..., KeyPair], manifest: Path) -> None:
    stranger = new_key("stranger", trusted=False)
    signature = stranger.sign(manifest).read_text()
    keys = load_trusted_keys(lab.public.parent)
    messages = [
        str(refused(MANIFEST, signature, keys)),
        str(refused(b"changed", lab.sign(manifest).read_text(), keys)),
    ]
    key_material = [lab.public.read_text().splitlines()[1], *signature.splitlines()[1::2]]
    assert all(material not in message for material in key_material for message in messages)


def test_the_error_is_a_firmware_error_with_its_code_row_and_dbus_name() -> None:
    error = SignatureInvalidError("signature: x", reason=SignatureReason.UNKNOWN_KEY, key_id="00")
    assert isinstance(error, FirmwareError)
    assert error.error_code is ErrorCode.SIGNATURE_INVALID
    assert str(ErrorCode.SIGNATURE_INVALID) == "signature_invalid"
    assert not ErrorCode.SIGNATURE_INVALID.transient  # the server would send the same signature again
    assert ERROR_ROWS[ErrorCode.SIGNATURE_INVALID].startswith("Signature invalid: ")
    dbus_error = to_dbus_error(error)
    assert dbus_error.type == names.SIGNATURE_INVALID == "org.openuc2.OTA1.Error.SignatureInvalid"
    assert dbus_error.text == "signature: x"


def test_importing_the_module_does_not_load_cryptography() -> None:
    """The daemon's idle memory: OpenSSL's bindings load on the first check, not with the module."""
    code = "import sys, uc2otad.firmware.minisign; sys.exit('cryptography' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=20).returncode == 0

"""Read an offline release bundle (issue 21): a ``.zip`` or ``.tar.gz`` carried on a USB stick.

The bundle is all or nothing: :func:`read_bundle` returns only when every image checked out, and otherwise
raises one :class:`~uc2otad.errors.BundleError` naming the member and the rule. The archive comes as a
binary file object (the daemon gets an open file descriptor from the caller, as fwupd's ``Install``
does); the format is told by its magic bytes, never by its name. It is blocking: the daemon calls it in
a worker thread. Nothing is ever extracted to disk; members are read into memory, bounded.

**The layout, from the sources.** The firmware release workflow, youseetoo/uc2-esp32
``.github/workflows/build-and-release.yaml`` at commit 063e5a68336bb98366511d7c459055462de433e1, writes:

- per board, ``<board_id>.bin`` (lines 166-183): ``esptool merge_bin`` of bootloader, partitions,
  boot_app0 and app at 0x0 when the build has a bootloader and partition table, else the bare
  ``firmware.bin``. So a release ``.bin`` is usually a *merged* image although its name has no
  ``_merged`` suffix;
- per board, ``<board_id>-manifest.json`` (lines 185-198), an ESP Web Tools manifest:
  ``{"name", "version", "home_assistant_domain", "funding_url", "builds": [{"chipFamily": "ESP32" |
  "ESP32-S3", "parts": [{"path": "<board_id>.bin", "offset": 0}]}]}``;
- ``firmware-index.json`` (lines 234-270): ``{"version": <tag>, "generated", "repository", "cdn_base",
  "firmware": [{"id", "name", "chipFamily", "manifest": "<id>-manifest.json", "binary": "<id>.bin"}]}``;
- the release assets are exactly ``*.bin``, ``*-manifest.json`` and ``firmware-index.json`` (lines
  298-301), all in one flat folder. The copy mirrored to youseetoo/uc2-esp32-binaries (one branch per
  tag, lines 337-420) has the same files, with each manifest's ``parts[].path`` rewritten to an absolute
  URL (lines 400-420); we do not use ``parts``, so both read alike.

None of these carries a digest: images vouched for only by ``firmware-index.json`` rest on the
archive's own CRC-32 (zip per member, gzip for the whole stream), which catches damage, not tampering.
Our own ``version.json`` (:mod:`uc2otad.firmware.manifest`: ``version``, ``files``: name → ``size``,
``sha256``, ``version``) does carry them, and ``version.json.minisig`` beside it is handed to the caller
to verify. No commit of uc2-esp32 has a ``tools/write_fw_manifest.py`` (the name ``manifest.py`` gives
for the writer of ``version.json``), and the release workflow writes no ``version.json``: for now it
comes from our side of the fence.

**Rules**, each for a failure a stick can bring:

- formats: zip (``PK\\x03\\x04``) or gzip (``\\x1f\\x8b``) holding a tar; anything else is refused;
- sizes: each member's *declared* size is checked before it is read, and bytes are *counted* while it is
  read (a zip bomb declares a small archive and a huge content; a damaged header may declare anything),
  so nothing unbounded reaches memory; each image at most
  ``max_image_size``, each JSON or signature at most :data:`MAX_METADATA_SIZE`, all members together at
  most ``max_total``, at most :data:`MAX_MEMBERS` entries; the decompressed tar stream is bounded too,
  since tarfile reads pax and GNU long-name records whole;
- paths: no absolute path, no ``..``, no symlink, hard link, device, FIFO or sparse member; the files sit
  at the top level or in one single top-level folder (a zipped release folder), nothing deeper; every
  path component passes :func:`~uc2otad.firmware.names.check_file_name`; no two members share a name
  (compared case-insensitively: a FAT stick cannot hold both). macOS litter (the ``__MACOSX/`` folder and
  ``.DS_Store`` files, which Finder's "Compress" adds) is skipped unread;
- integrity: a zip member whose CRC-32 fails, a truncated archive or a gzip stream with a bad CRC or
  length is refused: every member is read to its end and the gzip stream to its trailer;
- promises: at least one of ``version.json`` / ``firmware-index.json``; every file ``version.json``
  lists is present with its size and sha256; every ``binary`` and ``manifest`` the index names is
  present; a board manifest's ``chipFamily`` agrees with the index; both files name the same release
  version;
- unknown images: a ``.bin`` that neither file lists is refused, not ignored. Nobody vouches for its
  content, and the likely cause is a stick that mixes two releases; importing the rest would leave the
  technician believing that image was imported too. Other unlisted files (a README, SHA256SUMS) are
  read (so their CRC is checked) and dropped.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

from uc2otad.errors import BundleError, ManifestError, UnsafeFileNameError
from uc2otad.firmware.manifest import MANIFEST_NAME, Manifest, parse_manifest
from uc2otad.firmware.names import check_file_name, is_image_name
from uc2otad.firmware.server import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES

#: the release workflow's list of boards and their files (build-and-release.yaml lines 234-270)
INDEX_NAME = "firmware-index.json"
#: minisign's detached signature of ``version.json``, passed on unverified
SIGNATURE_NAME = MANIFEST_NAME + ".minisig"
#: suffix of the release workflow's per-board ESP Web Tools manifests
BOARD_MANIFEST_SUFFIX = "-manifest.json"

ZIP_MAGIC = b"PK\x03\x04"
#: an empty zip starts with its end-of-central-directory record
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
GZIP_MAGIC = b"\x1f\x8b"

#: all members together, uncompressed. A release has 17 boards (build-and-release.yaml lines 28-101);
#: a merged image is under 4 MiB, so a full release is under 70 MiB. Twice that, and the Pi keeps it in
#: memory at once.
MAX_BUNDLE_TOTAL = 128 * 1024 * 1024
#: JSON files and the signature: the same bound as a manifest fetched from the server
MAX_METADATA_SIZE = MAX_MANIFEST_BYTES
#: entries of any kind: 17 boards x 2 files + index + manifest + signature is about 40
MAX_MEMBERS = 256
#: what a tar stream holds besides member data: per member a 512-byte header, padding up to 511 bytes and
#: perhaps a pax or long-name record, plus the end blocks and record padding; 256 members need < 1 MiB
_TAR_HEADROOM = 1024 * 1024
#: an archive spooled from a pipe stays in memory up to this size, then goes to a temporary file
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CHUNK_SIZE = 64 * 1024
_MACOS_FOLDER = "__MACOSX"
_MACOS_FILE = ".DS_Store"
_ZIP_ENCRYPTED = 0x1


@dataclass(frozen=True)
class BundleImage:
    """One ``.bin`` of the bundle, checked against every promise made for it."""

    name: str
    data: bytes = field(repr=False)
    #: sha256 of ``data``, lowercase hex
    sha256: str
    size: int
    #: the build version: its ``version.json`` entry's, else its board manifest's, else the release's
    version: str | None
    #: as the release names it (``ESP32``, ``ESP32-S3``); None when only ``version.json`` lists it
    chip_family: str | None = None


@dataclass(frozen=True)
class IndexEntry:
    """One board of ``firmware-index.json``."""

    binary: str
    id: str | None = None
    name: str | None = None
    chip_family: str | None = None
    manifest: str | None = None


@dataclass(frozen=True)
class FirmwareIndex:
    """A parsed ``firmware-index.json``."""

    version: str | None
    generated: str | None = None
    repository: str | None = None
    cdn_base: str | None = None
    firmware: tuple[IndexEntry, ...] = ()


@dataclass(frozen=True)
class Bundle:
    """A bundle whose every image checked out."""

    #: the release: ``version.json``'s version, else the index's
    version: str | None
    images: tuple[BundleImage, ...]
    #: the raw ``version.json``, for signature checking and the cache; None when absent
    manifest_bytes: bytes | None = field(default=None, repr=False)
    #: the raw ``version.json.minisig``, unverified; None when absent
    signature_bytes: bytes | None = field(default=None, repr=False)
    index: FirmwareIndex | None = None


@dataclass(frozen=True)
class _File:
    """A regular member as read: its size and sha256 always, its bytes only when we use them."""

    name: str
    size: int
    sha256: str
    data: bytes | None


def read_bundle(
    source: BinaryIO, *, max_image_size: int = MAX_IMAGE_SIZE, max_total: int = MAX_BUNDLE_TOTAL
) -> Bundle:
    """Read and check a release bundle, a ``.zip`` or ``.tar.gz`` told apart by magic bytes.

    :param source: the archive, open for binary reading from its current position; a pipe is spooled
        first (zip needs to seek), bounded by ``max_total``
    :param max_image_size: the largest ``.bin`` accepted
    :param max_total: the largest sum of all members, uncompressed, and the largest archive
    :raises BundleError: the bundle breaks a rule (module docstring); ``rule`` names it, ``name`` the
        member. Nothing of the bundle is returned then.
    """
    collector = _Collector(max_image_size=max_image_size, max_total=max_total)
    with _seekable(source, max_total + _TAR_HEADROOM) as archive:
        magic = archive.read(len(ZIP_MAGIC))
        archive.seek(-len(magic), 1)
        if magic in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
            _read_zip(archive, collector)
        elif magic.startswith(GZIP_MAGIC):
            _read_tar_gz(archive, collector, max_total + _TAR_HEADROOM)
        else:
            raise BundleError(
                f"bundle is neither a zip nor a gzip-compressed tar: magic={magic.hex()}", rule="format"
            )
    return _assemble(collector.files)


@contextlib.contextmanager
def _seekable(source: BinaryIO, limit: int) -> Iterator[IO[bytes]]:
    """The source itself when it can seek, else a spooled copy of it; either way at most ``limit`` bytes
    from its current position."""
    if source.seekable():
        start = source.tell()
        end = source.seek(0, 2)
        source.seek(start)
        if end - start > limit:
            raise BundleError(f"bundle too large: size={end - start} limit={limit}", rule="total_too_large")
        yield source
        return
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        copied = 0
        while chunk := source.read(_CHUNK_SIZE):
            copied += len(chunk)
            if copied > limit:
                raise BundleError(f"bundle too large: size>{limit}", rule="total_too_large")
            spool.write(chunk)
        spool.seek(0)
        yield spool


class _Collector:
    """Checks each member's path, type and size as the archive walks past, and keeps what it read."""

    def __init__(self, *, max_image_size: int, max_total: int) -> None:
        self.max_image_size = max_image_size
        self.max_total = max_total
        self.files: dict[str, _File] = {}
        self._seen: dict[str, str] = {}  # casefolded root-relative name -> member path
        self._entries = 0
        self._declared_total = 0
        self._read_total = 0
        self._top_folders: set[str] = set()
        self._top_level_file: str | None = None

    def admit(self, path: str, *, is_dir: bool) -> str | None:
        """The member's name relative to the bundle's root, or None for a directory or skipped litter.

        :raises BundleError: too many members, or a path breaking a rule
        """
        self._entries += 1
        if self._entries > MAX_MEMBERS:
            raise BundleError(
                f"bundle has more than {MAX_MEMBERS} members", rule="too_many_members", name=path
            )
        parts = _path_parts(path)
        if not parts or parts[0] == _MACOS_FOLDER or parts[-1] == _MACOS_FILE:
            return None
        for part in parts:
            try:
                check_file_name(part)
            except UnsafeFileNameError as err:
                raise BundleError(f"bundle member {path!r}: {err}", rule="file_name", name=path) from err
        if len(parts) > 2 or (is_dir and len(parts) > 1):
            raise BundleError(
                f"bundle member {path!r}: nested too deep, only one top-level folder is allowed",
                rule="nested",
                name=path,
            )
        if is_dir or len(parts) == 2:
            self._top_folders.add(parts[0])
        elif self._top_level_file is None:
            self._top_level_file = path
        self.check_layout()
        if is_dir:
            return None
        name = parts[-1]
        if name.casefold() in self._seen:
            raise BundleError(
                f"bundle member {path!r}: duplicate of {self._seen[name.casefold()]!r}",
                rule="duplicate",
                name=path,
            )
        self._seen[name.casefold()] = path
        return name

    def limit_for(self, name: str) -> int:
        return MAX_METADATA_SIZE if _is_metadata(name) else self.max_image_size

    def declare(self, name: str, size: int) -> None:
        """Refuse a member by its declared size, before a byte of it is read."""
        limit = self.limit_for(name)
        if size > limit:
            raise BundleError(
                f"bundle member {name!r} too large: size={size} limit={limit}", rule="too_large", name=name
            )
        self._declared_total += size
        if self._declared_total > self.max_total:
            raise BundleError(
                f"bundle too large at member {name!r}: total>{self.max_total}",
                rule="total_too_large",
                name=name,
            )

    def read(self, name: str, stream: IO[bytes], declared: int) -> None:
        """Read a member to its end (so its CRC is checked), counting bytes whatever the header said."""
        limit = self.limit_for(name)
        digest = hashlib.sha256()
        keep = is_image_name(name) or _is_metadata(name)
        chunks: list[bytes] = []
        size = 0
        while chunk := stream.read(_CHUNK_SIZE):
            size += len(chunk)
            self._read_total += len(chunk)
            if size > declared:
                raise BundleError(
                    f"bundle member {name!r} longer than its header says: size>{declared}",
                    rule="damaged",
                    name=name,
                )
            if size > limit:
                raise BundleError(
                    f"bundle member {name!r} too large: size>{limit}", rule="too_large", name=name
                )
            if self._read_total > self.max_total:
                raise BundleError(
                    f"bundle too large at member {name!r}: total>{self.max_total}",
                    rule="total_too_large",
                    name=name,
                )
            digest.update(chunk)
            if keep:
                chunks.append(chunk)
        if size != declared:
            raise BundleError(
                f"bundle member {name!r} truncated: size={size} declared={declared}",
                rule="damaged",
                name=name,
            )
        self.files[name] = _File(name, size, digest.hexdigest(), b"".join(chunks) if keep else None)

    def check_layout(self) -> None:
        """Files at the top level or in one folder, not both: checked at each member, so that this rule,
        not a later one (a duplicate name), names what is wrong."""
        if len(self._top_folders) > 1:
            folders = ", ".join(sorted(self._top_folders))
            raise BundleError(f"bundle has more than one top-level folder: {folders}", rule="top_folder")
        if self._top_folders and self._top_level_file is not None:
            (folder,) = self._top_folders
            raise BundleError(
                f"bundle member {self._top_level_file!r}: beside the top-level folder {folder!r}",
                rule="top_folder",
                name=self._top_level_file,
            )


def _path_parts(path: str) -> tuple[str, ...]:
    """A member path as components: ``./`` prefixes and a directory's trailing slash dropped.

    :raises BundleError: absolute, ``..``, or an empty or ``.`` component inside the path
    """
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise BundleError(f"bundle member {path!r}: absolute path", rule="absolute_path", name=path)
    parts = path.split("/")
    while parts and parts[0] == ".":
        del parts[0]
    if parts and not parts[-1]:
        del parts[-1]
    if any(part == ".." or part.startswith("..\\") or part.endswith("\\..") for part in parts):
        raise BundleError(f"bundle member {path!r}: path traversal", rule="traversal", name=path)
    if any(part in ("", ".") for part in parts):
        raise BundleError(f"bundle member {path!r}: empty or '.' path component", rule="file_name", name=path)
    return tuple(parts)


def _is_metadata(name: str) -> bool:
    return name.lower().endswith(".json") or name == SIGNATURE_NAME


def _read_zip(archive: IO[bytes], collector: _Collector) -> None:
    current: str | None = None
    try:
        with zipfile.ZipFile(archive) as bundle:
            infos = bundle.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BundleError(
                    f"bundle has {len(infos)} members, limit={MAX_MEMBERS}", rule="too_many_members"
                )
            for info in infos:
                current = info.filename
                is_dir = _zip_member_kind(info)
                name = collector.admit(info.filename, is_dir=is_dir)
                if name is None:
                    continue
                if info.flag_bits & _ZIP_ENCRYPTED:
                    raise BundleError(f"bundle member {current!r}: encrypted", rule="encrypted", name=current)
                collector.declare(name, info.file_size)
                with bundle.open(info) as stream:
                    collector.read(name, stream, info.file_size)
    except BundleError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        zlib.error,
        NotImplementedError,
    ) as err:
        where = f"bundle member {current!r}" if current else "bundle"
        raise BundleError(f"{where}: damaged zip archive: {err}", rule="damaged", name=current) from err


def _zip_member_kind(info: zipfile.ZipInfo) -> bool:
    """True for a directory, False for a regular file.

    :raises BundleError: a symlink, device, FIFO or socket (the Unix mode zip keeps in the high bits)
    """
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise BundleError(f"bundle member {info.filename!r}: symlink", rule="link", name=info.filename)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise BundleError(
            f"bundle member {info.filename!r}: not a regular file: mode={mode:o}",
            rule="special_file",
            name=info.filename,
        )
    return info.is_dir() or kind == stat.S_IFDIR


def _read_tar_gz(archive: IO[bytes], collector: _Collector, limit: int) -> None:
    current: str | None = None
    try:
        with gzip.GzipFile(fileobj=archive, mode="rb") as unzipped:
            stream = _BoundedReader(unzipped, limit)
            with tarfile.open(fileobj=cast("IO[bytes]", stream), mode="r|") as bundle:
                for member in bundle:
                    current = member.name
                    is_dir = _tar_member_kind(member)
                    name = collector.admit(member.name, is_dir=is_dir)
                    if name is None:
                        continue
                    collector.declare(name, member.size)
                    data = bundle.extractfile(member)
                    if data is None:  # pragma: no cover - _tar_member_kind let only files and folders through
                        raise BundleError(
                            f"bundle member {current!r}: no data", rule="special_file", name=current
                        )
                    collector.read(name, data, member.size)
            current = None
            # tarfile stops at the end-of-archive blocks; read on to the gzip trailer so that its CRC-32
            # and length are checked (a truncated or damaged stream raises here)
            for _ in stream.chunks():
                pass
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, UnicodeError) as err:
        where = f"bundle member {current!r}" if current else "bundle"
        raise BundleError(f"{where}: damaged tar.gz archive: {err}", rule="damaged", name=current) from err


def _tar_member_kind(member: tarfile.TarInfo) -> bool:
    """True for a directory, False for a regular file.

    :raises BundleError: a symlink, hard link, device, FIFO or sparse file
    """
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        raise BundleError(
            f"bundle member {member.name!r}: {kind} to {member.linkname!r}", rule="link", name=member.name
        )
    if member.isdir():
        return True
    if not member.isreg() or member.issparse():
        raise BundleError(
            f"bundle member {member.name!r}: not a regular file: type={member.type!r}",
            rule="special_file",
            name=member.name,
        )
    return False


class _BoundedReader:
    """A read-only stream that refuses to deliver more than ``limit`` bytes in all."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK_SIZE if size < 0 else min(size, _CHUNK_SIZE)
        chunk = self._raw.read(min(size, self._limit - self._count + 1))
        self._count += len(chunk)
        if self._count > self._limit:
            raise BundleError(f"bundle too large: uncompressed>{self._limit}", rule="total_too_large")
        return chunk

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK_SIZE):
            yield chunk


def _assemble(files: dict[str, _File]) -> Bundle:
    """Hold the files against every promise made for them, and build the bundle."""
    manifest_file = files.get(MANIFEST_NAME)
    index_file = files.get(INDEX_NAME)
    if manifest_file is None and index_file is None:
        raise BundleError(f"bundle has neither {MANIFEST_NAME} nor {INDEX_NAME}", rule="no_manifest")
    manifest = _parse_version_json(_data(manifest_file)) if manifest_file else None
    index = _parse_index(_data(index_file)) if index_file else None
    listed: set[str] = set()
    versions: dict[str, str] = {}  # the first known: version.json's entry, then the board manifest's
    chips: dict[str, str] = {}
    if manifest is not None:
        _check_version_json(manifest, files)
        listed.update(manifest.files)
        versions.update(
            (name, promise.version) for name, promise in manifest.files.items() if promise.version
        )
    if index is not None:
        for entry in index.firmware:
            board_version, chip = _check_index_entry(entry, files, index)
            listed.add(entry.binary)
            if board_version:
                versions.setdefault(entry.binary, board_version)
            if chip:
                chips.setdefault(entry.binary, chip)
    release = _release_version(manifest, index)
    images = []
    for name in sorted(files):
        if not is_image_name(name):
            continue
        if name not in listed:
            raise BundleError(
                f"bundle member {name!r}: an image neither {MANIFEST_NAME} nor {INDEX_NAME} lists",
                rule="unlisted",
                name=name,
            )
        found = files[name]
        images.append(
            BundleImage(
                name=name,
                data=_data(found),
                sha256=found.sha256,
                size=found.size,
                version=versions.get(name, release),
                chip_family=chips.get(name),
            )
        )
    if not images:
        raise BundleError("bundle holds no .bin image", rule="no_images")
    signature = files.get(SIGNATURE_NAME)
    return Bundle(
        version=release,
        images=tuple(images),
        manifest_bytes=manifest_file.data if manifest_file else None,
        signature_bytes=signature.data if signature else None,
        index=index,
    )


def _data(found: _File) -> bytes:
    # never None in practice: _Collector.read keeps every image and JSON file, and _parse_index refuses a
    # board manifest that is not a .json file
    if found.data is None:  # pragma: no cover
        raise BundleError(f"bundle member {found.name!r}: not kept", rule="missing", name=found.name)
    return found.data


def _parse_version_json(body: bytes) -> Manifest:
    try:
        manifest = parse_manifest(body)
    except ManifestError as err:
        raise BundleError(
            f"bundle member {MANIFEST_NAME!r}: {err}", rule="manifest_invalid", name=MANIFEST_NAME
        ) from err
    # parse_manifest drops names that are not plain file names (a server's file could never be fetched
    # under them); in a bundle such a listed file can never be present, so the promise is broken
    listed = json.loads(body).get("files", {})
    for name in listed:
        if name not in manifest.files:
            raise BundleError(
                f"bundle member {MANIFEST_NAME!r}: lists {name!r}, not a plain file name",
                rule="manifest_invalid",
                name=MANIFEST_NAME,
            )
    return manifest


def _check_version_json(manifest: Manifest, files: dict[str, _File]) -> None:
    for name, promise in manifest.files.items():
        found = files.get(name)
        if found is None:
            raise BundleError(
                f"bundle member {name!r}: listed in {MANIFEST_NAME} but missing", rule="missing", name=name
            )
        if found.size != promise.size:
            raise BundleError(
                f"bundle member {name!r}: size mismatch: listed={promise.size} read={found.size}",
                rule="size",
                name=name,
            )
        if found.sha256 != promise.sha256:
            raise BundleError(
                f"bundle member {name!r}: sha256 mismatch: listed={promise.sha256} read={found.sha256}",
                rule="sha256",
                name=name,
            )


def _check_index_entry(
    entry: IndexEntry, files: dict[str, _File], index: FirmwareIndex
) -> tuple[str | None, str | None]:
    """The board's version and chip family, once its binary and manifest are present and agree."""
    if entry.binary not in files:
        raise BundleError(
            f"bundle member {entry.binary!r}: listed in {INDEX_NAME} but missing",
            rule="missing",
            name=entry.binary,
        )
    version, chip = None, entry.chip_family
    if entry.manifest is not None:
        board_manifest = files.get(entry.manifest)
        if board_manifest is None:
            raise BundleError(
                f"bundle member {entry.manifest!r}: listed in {INDEX_NAME} but missing",
                rule="missing",
                name=entry.manifest,
            )
        version, manifest_chip = _parse_board_manifest(entry.manifest, _data(board_manifest))
        if chip is not None and manifest_chip is not None and chip != manifest_chip:
            raise BundleError(
                f"bundle member {entry.manifest!r}: chipFamily={manifest_chip!r}, {INDEX_NAME} says {chip!r}",
                rule="chip_mismatch",
                name=entry.manifest,
            )
        chip = chip or manifest_chip
    return version or index.version, chip


def _release_version(manifest: Manifest | None, index: FirmwareIndex | None) -> str | None:
    ours = manifest.version if manifest else None
    theirs = index.version if index else None
    if ours is not None and theirs is not None and ours != theirs:
        raise BundleError(
            f"bundle: {MANIFEST_NAME} says version={ours!r}, {INDEX_NAME} says version={theirs!r}",
            rule="version_mismatch",
        )
    return ours or theirs


def _load_object(name: str, body: bytes, rule: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"bundle member {name!r}: not JSON: {err}", rule=rule, name=name) from err
    if not isinstance(document, dict):
        raise BundleError(
            f"bundle member {name!r}: a JSON {type(document).__name__}, not an object", rule=rule, name=name
        )
    return document


def _text(document: dict[str, Any], key: str, name: str, rule: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise BundleError(f"bundle member {name!r}: {key!r} is not a string", rule=rule, name=name)
    return value


def _parse_index(body: bytes) -> FirmwareIndex:
    """``firmware-index.json`` as build-and-release.yaml lines 240-270 write it.

    :raises BundleError: not an object, ``firmware`` not a list of objects, a ``binary`` or ``manifest``
        missing or not a plain file name
    """
    rule = "index_invalid"
    document = _load_object(INDEX_NAME, body, rule)
    boards = document.get("firmware", [])
    if not isinstance(boards, list):
        raise BundleError(
            f"bundle member {INDEX_NAME!r}: 'firmware' is not a list", rule=rule, name=INDEX_NAME
        )
    entries = []
    for board in boards:
        if not isinstance(board, dict):
            raise BundleError(
                f"bundle member {INDEX_NAME!r}: a firmware entry is not an object", rule=rule, name=INDEX_NAME
            )
        binary = _text(board, "binary", INDEX_NAME, rule)
        manifest = _text(board, "manifest", INDEX_NAME, rule)
        if binary is None:
            raise BundleError(
                f"bundle member {INDEX_NAME!r}: a firmware entry has no 'binary'", rule=rule, name=INDEX_NAME
            )
        for listed in (binary, manifest):
            try:
                check_file_name(listed or "x")
            except UnsafeFileNameError as err:
                raise BundleError(f"bundle member {INDEX_NAME!r}: {err}", rule=rule, name=INDEX_NAME) from err
        if manifest is not None and not _is_metadata(manifest):
            raise BundleError(
                f"bundle member {INDEX_NAME!r}: manifest={manifest!r} is not a .json file",
                rule=rule,
                name=INDEX_NAME,
            )
        entries.append(
            IndexEntry(
                binary=binary,
                id=_text(board, "id", INDEX_NAME, rule),
                name=_text(board, "name", INDEX_NAME, rule),
                chip_family=_text(board, "chipFamily", INDEX_NAME, rule),
                manifest=manifest,
            )
        )
    return FirmwareIndex(
        version=_text(document, "version", INDEX_NAME, rule),
        generated=_text(document, "generated", INDEX_NAME, rule),
        repository=_text(document, "repository", INDEX_NAME, rule),
        cdn_base=_text(document, "cdn_base", INDEX_NAME, rule),
        firmware=tuple(entries),
    )


def _parse_board_manifest(name: str, body: bytes) -> tuple[str | None, str | None]:
    """``version`` and ``builds[0].chipFamily`` of an ESP Web Tools manifest (build-and-release.yaml
    lines 185-198)."""
    rule = "index_invalid"
    document = _load_object(name, body, rule)
    version = _text(document, "version", name, rule)
    builds = document.get("builds", [])
    if not isinstance(builds, list) or not all(isinstance(build, dict) for build in builds):
        raise BundleError(f"bundle member {name!r}: 'builds' is not a list of objects", rule=rule, name=name)
    chip = _text(builds[0], "chipFamily", name, rule) if builds else None
    return version, chip

"""HTTP client of the firmware server: listing, ``version.json`` manifest and image downloads.

The listing is always fetched as ``<server>/`` with the trailing slash: the UC2 server's Caddyfile
(``handle_path /firmware/*``) does not match ``/firmware`` and answers it with an empty 200.

requests is blocking, so every transfer runs in a worker thread (:func:`uc2otad.aio.run_stoppable`) and
checks its stop event between chunks. Connection errors, a connection lost mid-body and 5xx answers are
retried with backoff (:class:`~uc2otad.retry.RetryPolicy`); 4xx answers, stalls and oversized bodies are
not, since trying again would only repeat them.

requests and urllib3 are imported on first use, in the worker thread that makes the first request:
together they cost an idle daemon about 7 MB and 0.1 s of start-up, and most of its life it has
nothing to download.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, TypeVar
from urllib.parse import quote, urlsplit

from uc2otad import __version__
from uc2otad.aio import StoppedError, run_stoppable
from uc2otad.errors import (
    ConfigError,
    DownloadCorruptError,
    DownloadTimeoutError,
    FirmwareError,
    FirmwareNotFoundError,
    ListingError,
    ManifestError,
    ServerUnreachableError,
)
from uc2otad.firmware.listing import Listing, parse_listing
from uc2otad.firmware.manifest import MANIFEST_NAME, Manifest, parse_manifest
from uc2otad.firmware.names import check_file_name
from uc2otad.retry import RetryPolicy

if TYPE_CHECKING:
    import requests

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: the procedure document's firmware server
DEFAULT_SERVER_URL = "http://localhost/firmware"
#: seconds to establish a TCP (and TLS) connection; a LAN or loopback server answers in milliseconds
CONNECT_TIMEOUT = 5.0
#: seconds without a single byte before a transfer counts as stalled (requests' read timeout)
READ_TIMEOUT = 10.0
#: seconds one attempt of a transfer may take in all; the document expects 2-5 s for ~1 MB on a LAN,
#: so a minute only trips on a server that trickles bytes just fast enough to dodge READ_TIMEOUT
TRANSFER_TIMEOUT = 60.0
#: largest listing we read; a real one with a few hundred images is tens of KiB
MAX_LISTING_BYTES = 4 * 1024 * 1024
#: largest version.json we read
MAX_MANIFEST_BYTES = 1024 * 1024
#: largest image we accept: the biggest UC2 image, a merged master image, is well under 4 MiB
MAX_IMAGE_SIZE = 16 * 1024 * 1024
_CHUNK_SIZE = 64 * 1024
_USER_AGENT = f"uc2otad/{__version__}"


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts and retries of every request to the firmware server."""

    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    transfer_timeout: float = TRANSFER_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: CA bundle for an https server with a private CA; None = the system's trust store
    ca_file: str | None = None


@dataclass(frozen=True)
class Validators:
    """What a cached copy knows about its origin, for a conditional GET."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class DownloadResult:
    """The outcome of one download: new bytes written to the sink, or 304 Not Modified."""

    modified: bool
    size: int = 0
    sha256: str = ""
    validators: Validators = field(default_factory=Validators)


class _TransientError(Exception):
    """A failure worth another attempt; ``final`` is raised if no attempt is left."""

    def __init__(self, final: FirmwareError) -> None:
        super().__init__(str(final))
        self.final = final


def normalize_server_url(url: str) -> str:
    """``url`` without trailing slashes, after checking it is an http(s) URL with a host.

    :raises ConfigError: another scheme, no host, credentials, a query or a fragment
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ConfigError("firmware_server", f"must be an http or https URL, not {url!r}")
    if not parts.hostname:
        raise ConfigError("firmware_server", f"has no host: {url!r}")
    if parts.username or parts.password:
        # credentials in a URL end up in logs and D-Bus replies; they have no place here
        raise ConfigError("firmware_server", "must not carry a user name or password")
    if parts.query or parts.fragment:
        raise ConfigError("firmware_server", f"must not have a query or fragment: {url!r}")
    return url.strip().rstrip("/")


class FirmwareServer:
    """One firmware server, addressed by its base URL (``http://localhost/firmware``)."""

    def __init__(self, url: str = DEFAULT_SERVER_URL, *, settings: HttpSettings | None = None) -> None:
        """:raises ConfigError: ``url`` is not an acceptable server URL"""
        self.url = normalize_server_url(url)
        self.settings = settings or HttpSettings()

    def __repr__(self) -> str:
        return f"FirmwareServer({self.url!r})"

    @property
    def listing_url(self) -> str:
        return self.url + "/"

    def file_url(self, name: str) -> str:
        """Download URL of ``name``; the listing's own ``url`` field is ignored, as ImSwitch does.

        :raises UnsafeFileNameError: ``name`` is not a plain file name
        """
        return f"{self.url}/{quote(check_file_name(name))}"

    async def list_files(self, *, max_image_size: int = MAX_IMAGE_SIZE) -> Listing:
        """The server's ``.bin`` files.

        :raises ListingError: no JSON listing at ``<server>/``
        :raises ServerUnreachableError, DownloadTimeoutError: the server could not be reached in time
        """
        return await run_stoppable(lambda stop: self._list_files(stop, max_image_size))

    async def get_manifest(self) -> Manifest | None:
        """The server's ``version.json``, or None if it publishes none.

        :raises ManifestError: published but not valid
        :raises ServerUnreachableError, DownloadTimeoutError: the server could not be reached in time
        """
        return await run_stoppable(self._get_manifest)

    async def get_document(self, name: str, limit: int) -> bytes | None:
        """The small file ``name`` beside the images (``version.json``, its signature), as served, or
        None when the server has none (404, 410).

        :raises ManifestError: another status, or larger than ``limit`` bytes
        :raises ServerUnreachableError, DownloadTimeoutError: the server could not be reached in time
        """
        url = self.file_url(name)

        def fetch(stop: threading.Event) -> bytes | None:
            status, _, body = self._with_retries(stop, lambda: self._get_small(url, limit, ManifestError))
            if status in (404, 410):
                return None
            if status != 200:
                raise ManifestError(f"firmware server answered {status} for {url}")
            return body

        return await run_stoppable(fetch)

    async def download(
        self,
        name: str,
        sink: BinaryIO,
        *,
        max_size: int = MAX_IMAGE_SIZE,
        validators: Validators | None = None,
    ) -> DownloadResult:
        """Stream ``name`` into ``sink``; see :meth:`download_blocking`."""
        return await run_stoppable(
            lambda stop: self.download_blocking(name, sink, stop, max_size=max_size, validators=validators)
        )

    # ---- blocking side (worker threads) -------------------------------------------------------------

    def download_blocking(
        self,
        name: str,
        sink: BinaryIO,
        stop: threading.Event,
        *,
        max_size: int = MAX_IMAGE_SIZE,
        validators: Validators | None = None,
    ) -> DownloadResult:
        """Stream ``name`` into ``sink``; with ``validators``, a conditional GET that may answer 304.

        ``sink`` is rewound and truncated before every attempt, so it never holds a mix of attempts.

        :raises FirmwareNotFoundError: 404 or another 4xx
        :raises DownloadCorruptError: truncated body, or more than ``max_size`` bytes
        :raises DownloadTimeoutError: stalled for the read timeout or longer than the transfer timeout
        :raises ServerUnreachableError: refused, reset or 5xx on every attempt
        :raises StoppedError: ``stop`` was set
        """
        url = self.file_url(name)
        headers = {"Accept-Encoding": "identity"}  # byte-exact body: Content-Length is the file size
        if validators is not None and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators is not None and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified

        def attempt() -> DownloadResult:
            return self._download_once(
                name=name, url=url, headers=headers, sink=sink, stop=stop, limit=max_size
            )

        return self._with_retries(stop, attempt)

    def _list_files(self, stop: threading.Event, max_image_size: int) -> Listing:
        status, content_type, body = self._with_retries(
            stop, lambda: self._get_small(self.listing_url, MAX_LISTING_BYTES, ListingError)
        )
        if status != 200:
            raise ListingError(f"firmware server answered {status} for its listing {self.listing_url}")
        listing = parse_listing(body, max_image_size=max_image_size, content_type=content_type)
        _LOGGER.debug("%s: listing has %d images, %d refused", self, len(listing.files), len(listing.refused))
        return listing

    def _get_manifest(self, stop: threading.Event) -> Manifest | None:
        url = f"{self.url}/{MANIFEST_NAME}"
        status, _, body = self._with_retries(
            stop, lambda: self._get_small(url, MAX_MANIFEST_BYTES, ManifestError)
        )
        if status in (404, 410):
            return None
        if status != 200:
            _LOGGER.warning("%s: %s answered %d; going on without a manifest", self, MANIFEST_NAME, status)
            return None
        return parse_manifest(body)

    def _with_retries(self, stop: threading.Event, attempt: Callable[[], T]) -> T:
        delays = self.settings.retry.delays()
        number = 1
        while True:
            try:
                return attempt()
            except _TransientError as failure:
                delay = next(delays, None)
                if delay is None:
                    raise failure.final from failure.final.__cause__
                log = _LOGGER.warning if number == 1 else _LOGGER.debug
                log("%s: attempt %d failed (%s); retrying in %.1fs", self, number, failure, delay)
                if stop.wait(delay):
                    raise StoppedError from None
                number += 1

    def _session(self) -> requests.Session:
        import requests  # noqa: PLC0415 - on first use, see the module docstring

        session = requests.Session()
        session.headers["User-Agent"] = _USER_AGENT
        session.trust_env = False  # no proxy or netrc from the environment: config comes from one file
        if self.settings.ca_file:
            session.verify = self.settings.ca_file
        return session

    def _get(self, session: requests.Session, url: str, headers: dict[str, str]) -> requests.Response:
        """Send a GET; a failure to connect (refused, connect timeout) or a 5xx is transient."""
        import requests  # noqa: PLC0415 - on first use, see the module docstring

        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        try:
            response = session.get(url, headers=headers, timeout=timeout, stream=True)
        except requests.ConnectTimeout as err:
            message = f"no connection to {url} within {self.settings.connect_timeout}s"
            raise _TransientError(_caused(DownloadTimeoutError(message), err)) from err
        except requests.ReadTimeout as err:
            message = f"{url} sent no answer within {self.settings.read_timeout}s"
            raise _caused(DownloadTimeoutError(message), err) from err
        except requests.exceptions.SSLError as err:  # an untrusted certificate stays untrusted: no retry
            raise ServerUnreachableError(f"TLS with {url} failed: {_tls_reason(err)}") from err
        except requests.ConnectionError as err:
            message = f"cannot reach {url}: {_reason(err)}"
            raise _TransientError(_caused(ServerUnreachableError(message), err)) from err
        except requests.RequestException as err:  # redirect loops, invalid URLs: repeating cannot help
            raise ServerUnreachableError(f"request to {url} failed: {type(err).__name__}: {err}") from err
        if response.status_code >= 500:
            response.close()
            raise _TransientError(ServerUnreachableError(f"{url} answered {response.status_code}"))
        return response

    def _get_small(self, url: str, limit: int, too_large: type[FirmwareError]) -> tuple[int, str, bytes]:
        """GET a small JSON document into memory: (status, content type, body)."""
        with self._session() as session, self._get(session, url, {"Accept": "application/json"}) as response:
            if response.status_code != 200:
                return response.status_code, "", b""
            body = bytearray()
            deadline = time.monotonic() + self.settings.transfer_timeout
            for chunk in self._chunks(response, url):
                body += chunk
                if len(body) > limit:
                    raise too_large(f"{url} is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise DownloadTimeoutError(f"{url} took longer than {self.settings.transfer_timeout}s")
            return 200, response.headers.get("Content-Type", ""), bytes(body)

    def _download_once(
        self,
        *,
        name: str,
        url: str,
        headers: dict[str, str],
        sink: BinaryIO,
        stop: threading.Event,
        limit: int,
    ) -> DownloadResult:
        sink.seek(0)
        sink.truncate()
        with self._session() as session, self._get(session, url, headers) as response:
            if response.status_code == 304:
                return DownloadResult(modified=False)
            if response.status_code in (404, 410):
                raise FirmwareNotFoundError(f"{name} is not on the firmware server ({url}: 404)", name=name)
            if response.status_code != 200:
                message = f"firmware server refused {url}: {response.status_code}"
                raise FirmwareNotFoundError(message, name=name)
            announced = _content_length(response)
            if announced is not None and announced > limit:
                raise DownloadCorruptError(
                    f"{name} is {announced} bytes, over the limit of {limit}", name=name
                )
            digest = hashlib.sha256()
            size = 0
            deadline = time.monotonic() + self.settings.transfer_timeout
            for chunk in self._chunks(response, url, announced):
                if stop.is_set():
                    raise StoppedError
                size += len(chunk)
                if size > limit:
                    raise DownloadCorruptError(f"{name} sent more than the limit of {limit} bytes", name=name)
                digest.update(chunk)
                sink.write(chunk)
                if time.monotonic() > deadline:
                    message = f"{name}: transfer took longer than {self.settings.transfer_timeout}s"
                    raise DownloadTimeoutError(message, name=name)
            return DownloadResult(
                modified=True,
                size=size,
                sha256=digest.hexdigest(),
                validators=Validators(
                    etag=response.headers.get("ETag"), last_modified=response.headers.get("Last-Modified")
                ),
            )

    def _chunks(self, response: requests.Response, url: str, announced: int | None = None) -> Iterator[bytes]:
        """The body as it arrives, with urllib3's exceptions turned into ours.

        ``read1`` (urllib3 >= 2.1) returns after one socket read, so the caller checks its transfer
        deadline at every arrival: a server that trickles a byte now and then cannot hold a transfer
        beyond it. (With an older urllib3, ``read`` fills whole chunks and the deadline is checked per
        chunk.) urllib3 reports a body cut short by a clean close as IncompleteRead and a reset as a
        protocol error: the first is a corrupt download, the second a lost server. Either may be a
        passing fault, so both are retried.
        """
        import requests  # noqa: PLC0415 - on first use, see the module docstring
        import urllib3.exceptions  # noqa: PLC0415

        raw = response.raw
        read: Callable[[int], bytes] = getattr(raw, "read1", None) or raw.read
        while True:
            try:
                chunk = read(_CHUNK_SIZE)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as err:
                if _is_read_timeout(err):
                    message = f"{url} stalled for {self.settings.read_timeout}s"
                    raise _caused(DownloadTimeoutError(message), err) from err
                if _is_incomplete(err):
                    expected = f"{announced} bytes" if announced is not None else "the whole body"
                    message = f"{url} truncated: the server closed before sending {expected}"
                    raise _TransientError(_caused(DownloadCorruptError(message), err)) from err
                message = f"connection to {url} lost: {_reason(err)}"
                raise _TransientError(_caused(ServerUnreachableError(message), err)) from err
            if not chunk:
                return
            yield chunk


def _content_length(response: requests.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _is_read_timeout(err: BaseException) -> bool:
    import urllib3.exceptions  # noqa: PLC0415 - loaded already by whoever raised ``err``

    return any(isinstance(e, (urllib3.exceptions.ReadTimeoutError, TimeoutError)) for e in _chain(err))


def _is_incomplete(err: BaseException) -> bool:
    import urllib3.exceptions  # noqa: PLC0415 - loaded already by whoever raised ``err``

    return any(isinstance(e, urllib3.exceptions.IncompleteRead) for e in _chain(err))


def _chain(err: BaseException) -> list[BaseException]:
    """The exception, its causes and the exceptions stored in its args (urllib3 nests them there)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [err]
    while todo and len(seen) < 16:
        current = todo.pop()
        seen.append(current)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        todo.extend(linked for linked in (current.__cause__, current.__context__) if linked is not None)
    return seen


def _reason(err: BaseException) -> str:
    """The OS-level reason, e.g. 'Connection refused', without urllib3's object reprs."""
    for inner in reversed(_chain(err)):
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
    return type(err).__name__


def _tls_reason(err: BaseException) -> str:
    """'certificate verify failed: …' from the ssl error inside requests' and urllib3's wrappers."""
    import ssl  # noqa: PLC0415 - loaded already by whoever raised ``err``

    for inner in _chain(err):
        if isinstance(inner, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {inner.verify_message}"
        if isinstance(inner, ssl.SSLError):
            return str(inner.reason or inner)
    return type(err).__name__


def _caused(error: E, cause: BaseException) -> E:
    """``error`` with ``cause`` attached, for errors that the retry loop raises later."""
    error.__cause__ = cause
    return error

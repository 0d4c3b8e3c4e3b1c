"""String arguments checked at the D-Bus edge: a cap on every one, and the firmware server URL in full.

Everything a client sends is checked here before the engine stores or logs any of it (issue 15, D11).
dbus-fast and dbus-daemon already bound a message (128 MiB), which is far too much for a value that ends
up in ``settings.json``, the journal and every PropertiesChanged signal. The engine still checks what
each value means (an SSID's bytes, a file name's characters); this module makes sure nothing huge or
multi-line gets that far, and that a refusal never echoes the bad value whole.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from uc2otad import secrets, settings
from uc2otad.errors import ConfigError, InvalidArgumentError
from uc2otad.firmware.directory import is_local_source, normalize_folder_url
from uc2otad.firmware.names import MAX_NAME_BYTES

#: a firmware server URL: 2048 characters is the de-facto URL limit of browsers and servers, and a
#: lab's server URL is a few dozen
MAX_URL_LENGTH = 2048
#: an SSID: the firmware's struct holds 32 bytes with the terminating NUL (WiFi's own limit is 32)
MAX_SSID_BYTES = settings.MAX_SSID_BYTES
#: a WPA2 passphrase is at most 63 characters
MAX_PASSWORD_BYTES = secrets.MAX_PASSWORD_BYTES
#: an inhibit reason is shown to people; keep it to a line (docs/api.md: 1..256 printable characters)
MAX_REASON_LENGTH = 256
#: a firmware image is a file name on the server and in the cache: NAME_MAX of Linux file systems
MAX_FILE_NAME_BYTES = MAX_NAME_BYTES
#: a serial port: a device path (PATH_MAX is 4096) or a socket:// / rfc2217:// URL
MAX_PORT_LENGTH = 4096
#: short words: a method ("auto", "wifi", "can"), a chip name ("esp32s3"), a ``match`` text
MAX_WORD_LENGTH = 64
#: characters of a refused value quoted in an error message
QUOTE_LENGTH = 60

#: an option's cap and whether it counts UTF-8 bytes (True) or characters (False); options not named
#: here are not strings
OPTION_CAPS: Mapping[str, tuple[int, bool]] = {
    "ssid": (MAX_SSID_BYTES, True),
    "password": (MAX_PASSWORD_BYTES, True),
    "method": (MAX_WORD_LENGTH, False),
    "link": (MAX_WORD_LENGTH, False),
    "firmware": (MAX_FILE_NAME_BYTES, True),
    "port": (MAX_PORT_LENGTH, False),
    "master_port": (MAX_PORT_LENGTH, False),
    "match": (MAX_WORD_LENGTH, False),
    "chip": (MAX_WORD_LENGTH, False),
}
#: Unicode categories that break or disguise a log line: control (incl. CR, LF, NEL), format (such as
#: the right-to-left override), surrogates, line and paragraph separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def quoted(value: str, limit: int = QUOTE_LENGTH) -> str:
    """``value`` as a Python literal (newlines escaped), cut to ``limit`` characters with "…"."""
    return repr(value[:limit]) + ("…" if len(value) > limit else "")


def has_unsafe_characters(value: str) -> bool:
    return any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in value)


def check_length(name: str, value: str, limit: int, *, in_bytes: bool = False) -> str:
    """:raises InvalidArgumentError: ``value`` is longer than ``limit`` characters (or UTF-8 bytes)"""
    size = len(value.encode("utf-8", "surrogatepass")) if in_bytes else len(value)
    if size > limit:
        unit = "bytes" if in_bytes else "characters"
        raise InvalidArgumentError(f"{name} must be at most {limit} {unit}, not {size}")
    return value


def check_options(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """Cap every string option (already typed by :func:`uc2otad.api.variants.read_options`)."""
    for key, value in values.items():
        if isinstance(value, str) and key in OPTION_CAPS:
            limit, in_bytes = OPTION_CAPS[key]
            check_length(key, value, limit, in_bytes=in_bytes)
    return values


def check_ssid(ssid: str) -> str:
    """The cap and no control characters; the engine checks the rest (:func:`settings.check_ssid`)."""
    check_length("ssid", ssid, MAX_SSID_BYTES, in_bytes=True)
    if has_unsafe_characters(ssid):
        raise InvalidArgumentError("ssid must not contain control or format characters")
    return ssid


def check_server_url(url: str) -> str:
    """A whole, plain http(s) URL with a host (and a port 1..65535 when one is given), or a firmware
    folder: an absolute path or a ``file://`` URL (issue 21).

    The engine then normalizes it (:func:`uc2otad.firmware.source.normalize_source_url`).

    :raises InvalidArgumentError: too long, control characters, not a URL, another scheme, no host, a
        bad port, credentials, a query or a fragment; a relative folder
    """
    check_length("firmware server URL", url, MAX_URL_LENGTH)
    if has_unsafe_characters(url):
        raise InvalidArgumentError("firmware server URL must not contain control or format characters")
    if is_local_source(url):
        try:
            normalize_folder_url(url)
        except ConfigError as err:
            raise InvalidArgumentError(f"firmware folder: {err.reason}") from None
        return url
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "Invalid IPv6 URL": an unclosed [
        raise InvalidArgumentError(f"firmware server URL {quoted(url)} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgumentError(f"firmware server URL must be http or https, not {quoted(url)}")
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0..65535
        raise InvalidArgumentError(
            f"firmware server URL {quoted(url)} has a bad port: it must be 1..65535"
        ) from None
    if port == 0:
        raise InvalidArgumentError(f"firmware server URL {quoted(url)} has a bad port: it must be 1..65535")
    if not parts.hostname:
        raise InvalidArgumentError(f"firmware server URL has no host: {quoted(url)}")
    if parts.username or parts.password:  # credentials end up in logs and replies; never echo them
        raise InvalidArgumentError("firmware server URL must not carry a user name or password")
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"firmware server URL must not have a query or fragment: {quoted(url)}")
    return url

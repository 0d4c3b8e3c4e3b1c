"""Our errors → D-Bus error names (CONTRACT.md §1), at the edge and nowhere else.

Expected failures become ``org.openuc2.OTA1.Error.<Name>`` with the error's own message. Anything
unexpected is logged with its traceback and answered as ``Failed`` naming only the exception class, so
internals never leak to a client (the shape of dbus-fast's own ``send_reply``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from dbus_fast import DBusError

from uc2otad.api import names
from uc2otad.errors import (
    CacheBusyError,
    ConfigError,
    FirmwareError,
    FirmwareNotFoundError,
    InhibitedError,
    InvalidArgumentError,
    JobBusyError,
    LinkBusyError,
    LinkClosedError,
    LinkOpenError,
    NoJobError,
    PortInUseError,
    SignatureInvalidError,
    Uc2otadError,
    UnhealthyError,
    UnknownCookieError,
    UnsafeFileNameError,
)

_LOGGER = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

#: most specific first: the first class that matches names the D-Bus error
_ERROR_NAMES: tuple[tuple[type[Exception], str], ...] = (
    (InvalidArgumentError, names.INVALID_ARGUMENT),
    (ConfigError, names.INVALID_ARGUMENT),
    (UnsafeFileNameError, names.INVALID_ARGUMENT),
    (UnknownCookieError, names.NOT_FOUND),
    (NoJobError, names.NOT_FOUND),
    (InhibitedError, names.INHIBITED),
    (UnhealthyError, names.UNHEALTHY),
    (JobBusyError, names.BUSY),
    (FirmwareNotFoundError, names.NOT_FOUND),
    (CacheBusyError, names.BUSY),
    (LinkBusyError, names.BUSY),
    (PortInUseError, names.BUSY),
    (LinkClosedError, names.NOT_CONNECTED),
    (LinkOpenError, names.NOT_CONNECTED),
    (SignatureInvalidError, names.SIGNATURE_INVALID),
    (FirmwareError, names.FAILED),
    (Uc2otadError, names.FAILED),
)


def to_dbus_error(error: Exception) -> DBusError:
    """The D-Bus error for ``error``; an unexpected one is logged with its traceback."""
    for error_class, name in _ERROR_NAMES:
        if isinstance(error, error_class):
            return DBusError(name, str(error))
    _LOGGER.error("api: unexpected %s", type(error).__name__, exc_info=error)
    return DBusError(names.FAILED, f"internal error: {type(error).__name__}")


def translated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a D-Bus method so every failure reaches the caller as one of the contract's errors."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except DBusError:
            raise
        except Exception as error:
            raise to_dbus_error(error) from error

    return wrapper

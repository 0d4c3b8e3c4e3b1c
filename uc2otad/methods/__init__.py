"""How an image reaches a board, and the registry of the ways to a slave.

``METHODS`` names each slave method's module and class, as python-can's ``BACKENDS`` names its
interfaces: a method is loaded when a job first needs it (the WiFi method and its ArduinoOTA uploader
cost idle memory nobody needs until then, docs/benchmarks.md), and the engine asks its class's traits
(:class:`~uc2otad.methods.base.SlaveMethod`) instead of knowing its name. A new method is a module with
such a class and one line here. The master itself is flashed over USB (:mod:`uc2otad.methods.usb`), which
is no slave method: it has its own D-Bus calls and status.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, cast

from uc2otad.errors import MethodUnavailableError, UnknownMethodError

if TYPE_CHECKING:
    from uc2otad.methods.base import SlaveMethod

_LOGGER = logging.getLogger(__name__)

#: method name → (module, class); "auto" picks the first one the master's link can carry
METHODS: dict[str, tuple[str, str]] = {
    "can": ("uc2otad.methods.can", "CanStreamMethod"),
    "wifi": ("uc2otad.methods.wifi", "WifiMethod"),
}


def method_class(name: str) -> type[SlaveMethod]:
    """The class of method ``name``, its module imported on first use.

    :raises UnknownMethodError: no method of that name
    :raises MethodUnavailableError: its module or class cannot be loaded (a broken installation)
    """
    try:
        module_name, class_name = METHODS[name]
    except KeyError:
        known = ", ".join(["auto", *METHODS])
        raise UnknownMethodError(f"unknown method {name!r}; known: {known}") from None
    try:
        return cast("type[SlaveMethod]", getattr(importlib.import_module(module_name), class_name))
    except (ImportError, AttributeError) as err:
        _LOGGER.exception("methods: %s (%s.%s) cannot be loaded", name, module_name, class_name)
        raise MethodUnavailableError(f"the {name} method cannot be loaded: {err}") from err

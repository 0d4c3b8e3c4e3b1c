"""Give a method its D-Bus signature without giving up Python type hints.

dbus-fast reads D-Bus types from a method's annotations. Since 4.0 it accepts ``Annotated[int,
DBusSignature("u")]``, but Debian bookworm ships 1.84, which only accepts signature strings as
annotations, and string annotations like ``"u"`` are not types to mypy. So the code keeps real Python
types, and :func:`dbus_types` hands dbus-fast (any version) an ``inspect.Signature`` with the D-Bus
strings: ``inspect.signature`` prefers ``__signature__`` when it is set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def dbus_types(*arguments: str, returns: str = "") -> Callable[[F], F]:
    """Declare the D-Bus types of a method's arguments (after ``self``) and of its result.

    :raises TypeError: the number of types differs from the number of arguments
    """

    def decorate(function: F) -> F:
        python = inspect.signature(function)
        self_parameter, *parameters = python.parameters.values()
        if len(parameters) != len(arguments):
            raise TypeError(f"{function.__name__}: {len(parameters)} arguments, {len(arguments)} D-Bus types")
        typed = [
            parameter.replace(annotation=kind) for parameter, kind in zip(parameters, arguments, strict=True)
        ]
        function.__signature__ = python.replace(  # type: ignore[attr-defined]
            parameters=[self_parameter, *typed], return_annotation=returns or inspect.Signature.empty
        )
        return function

    return decorate

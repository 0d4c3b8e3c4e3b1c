"""Plain Python values ⇄ D-Bus variants, by the contract's rules (CONTRACT.md §1).

Integers in dictionaries are ``u`` (uint32), strings ``s``, booleans ``b``, nested dictionaries
``a{sv}`` and lists of dictionaries ``aa{sv}``. A value that is unknown (None) is left out: D-Bus has no
null. Anything else is a bug in the caller, reported as such, never sent half-converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dbus_fast import Variant

from uc2otad.errors import InvalidArgumentError

UINT32_MAX = 2**32 - 1
#: characters of an unknown option's name quoted in the error (a key may be megabytes long)
QUOTE_LENGTH = 60


def to_variant(value: Any) -> Variant:
    """One value as a variant.

    :raises TypeError: a type the contract does not use, or an integer outside uint32
    """
    if isinstance(value, bool):  # before int: bool is an int
        return Variant("b", value)
    if isinstance(value, int):
        if not 0 <= value <= UINT32_MAX:
            raise TypeError(f"integer {value} does not fit uint32")
        return Variant("u", value)
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, Mapping):
        return Variant("a{sv}", to_variant_dict(value))
    if isinstance(value, list | tuple) and all(isinstance(item, Mapping) for item in value):
        return Variant("aa{sv}", [to_variant_dict(item) for item in value])
    raise TypeError(f"no D-Bus form for {type(value).__name__}")


def to_variant_dict(values: Mapping[str, Any]) -> dict[str, Variant]:
    """A dictionary as ``a{sv}``, leaving out None values."""
    return {str(key): to_variant(value) for key, value in values.items() if value is not None}


def read_options(options: Mapping[str, Variant], allowed: Mapping[str, str]) -> dict[str, Any]:
    """Unwrap an ``a{sv}`` options argument after checking each key and its signature.

    :param allowed: option name → the D-Bus signature it must have
    :raises InvalidArgumentError: an unknown option, or an option of the wrong type
    """
    values: dict[str, Any] = {}
    for key, variant in options.items():
        if key not in allowed:
            shown = repr(key[:QUOTE_LENGTH]) + ("…" if len(key) > QUOTE_LENGTH else "")
            raise InvalidArgumentError(f"unknown option {shown}; known: {', '.join(sorted(allowed))}")
        if variant.signature != allowed[key]:
            raise InvalidArgumentError(
                f"option {key!r} must be of type {allowed[key]!r}, not {variant.signature!r}"
            )
        values[key] = variant.value
    return values

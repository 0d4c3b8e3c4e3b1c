"""Hide secrets in what the link logs: commands, replies and the master's own log lines.

The WiFi method sends the WiFi password to the master inside ``/can_act`` (``uc2-stack.md`` §2.3), and
firmware may echo a command into its debug log. Every text the link logs passes through here first, so
a password never reaches the journal whichever way it travelled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: keys whose values are secrets, compared case-insensitively
SECRET_KEYS = frozenset({"password"})
MASK = "***"

# "password": "…" inside text that is (or contains) JSON, also with escaped quotes in the value
_SECRET_IN_TEXT = re.compile(r'("(?:' + "|".join(SECRET_KEYS) + r')"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)


def redacted(value: Any) -> Any:
    """A copy of a JSON value with every secret's value replaced by :data:`MASK`."""
    if isinstance(value, Mapping):
        return {
            key: MASK if isinstance(key, str) and key.lower() in SECRET_KEYS else redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def redacted_text(text: str) -> str:
    """``text`` with the value of every ``"password": "…"`` in it replaced by :data:`MASK`."""
    return _SECRET_IN_TEXT.sub(rf'\1"{MASK}"', text)

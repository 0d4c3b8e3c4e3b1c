"""The contract's one timestamp format (CONTRACT.md §2): ISO 8601, UTC offset, seconds precision.

Status dicts, history rows, the USB flash status and the cache's records all carry it, and clients
compare them as strings, so there is exactly one way to make one.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """This moment as the contract writes it: ``2026-12-05T02:00:00+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")

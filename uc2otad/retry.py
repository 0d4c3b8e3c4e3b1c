"""How often to try again, and how long to wait in between.

Kept apart from the code that does the trying (as aioesphomeapi keeps ``ReconnectLogic`` apart from the
connection), so that the HTTP client now and the update engine later share one definition of "bounded
retries with backoff", and tests can shrink it to nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait ``first_delay * factor**(n-1)``, at most ``max_delay``.

    The defaults (3 tries, 1 s then 2 s) suit a LAN server that restarts: short enough that a user who
    clicked "update" sees the failure within seconds, long enough to ride out a container restart.
    """

    attempts: int = 3
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError("delays must be non-negative and the factor at least 1")

    def delays(self) -> Iterator[float]:
        """The waits before the second, third, … attempt: ``attempts - 1`` values."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay)
            delay *= self.factor

"""Read the board's side of the TCP data phase: a stream of acks, then one final message.

The board writes the decimal count of every read it made, with no delimiter (``"146014601176"``), may
repeat the last one after an idle second, and TCP splits and merges these freely (arduino-ota.md §3.2,
§4.1). So acks cannot be counted or summed, and we do not try: they only prove that the board is alive.
What matters is the end: ``"OK"`` (success), error text ending in ``"\\r\\n"`` from ``Update.printError``
("MD5 Check Failed"), or the connection closing. Acks are digits only and every message starts with a
letter, so the first non-digit byte starts the message, even when ``"1024OK"`` arrives in one piece.

Main constraint: pure and incremental (fed whatever ``recv`` returned), so every split and merge can be
tested without a socket; every length is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: the longest final message we keep; the longest error string of the Update library is 31 characters
MAX_MESSAGE_LEN = 256
_SUCCESS = b"OK"
_DIGITS = b"0123456789"


class ReplyKind(Enum):
    """How the data phase ended, as far as the board told us."""

    #: the board verified and activated the image
    OK = "ok"
    #: the board sent an error text (its ``Update`` error string)
    ERROR = "error"
    #: the connection ended without a message
    CLOSED = "closed"


@dataclass(frozen=True)
class FinalReply:
    """The end of a data phase: its kind and the board's own words ("" for CLOSED)."""

    kind: ReplyKind
    text: str = ""


class BoardReplyParser:
    """Feed it every piece of the board's stream; it answers once the final message is known."""

    def __init__(self) -> None:
        self._message: bytearray | None = None
        #: bytes of acks seen so far (digits); diagnostics only, never a byte count of the image
        self.ack_bytes = 0

    def feed(self, data: bytes) -> FinalReply | None:
        """Take the next bytes read from the board; the final reply once it is complete, else None."""
        if self._message is None:
            acks = len(data) - len(data.lstrip(_DIGITS))
            self.ack_bytes += acks
            data = data[acks:]
            if not data:
                return None
            self._message = bytearray()
        self._message += data[: MAX_MESSAGE_LEN - len(self._message)]
        if self._message.startswith(_SUCCESS):
            return FinalReply(ReplyKind.OK, _SUCCESS.decode())
        if b"\n" in self._message or len(self._message) >= MAX_MESSAGE_LEN:
            return FinalReply(ReplyKind.ERROR, _first_line(self._message))
        return None

    def close(self) -> FinalReply:
        """The connection ended: what the board said until then."""
        if not self._message:
            return FinalReply(ReplyKind.CLOSED)
        return FinalReply(ReplyKind.ERROR, _first_line(self._message))


def _first_line(message: bytes | bytearray) -> str:
    """The message as text, without its line end; bytes that are not ASCII shown as U+FFFD."""
    return bytes(message).split(b"\n", 1)[0].decode("ascii", errors="replace").strip()

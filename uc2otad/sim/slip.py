"""SLIP framing (RFC 1055) as the ESP serial bootloaders use it, both directions.

Written from ``shared/specs/esptool-rom.md`` ("Protocol facts"): a frame is ``0xC0 … 0xC0`` with
``0xDB`` sent as ``DB DD`` and ``0xC0`` as ``DB DC``. Main constraint: the decoder takes whatever
bytes the host sends — noise before the first delimiter, a runaway frame with no end, a broken escape —
and never holds more than ``max_frame`` decoded bytes; what it cannot use it drops and counts.
"""

from __future__ import annotations

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD
_END = bytes([END])


def encode(payload: bytes) -> bytes:
    """``payload`` as one SLIP frame, delimiters included."""
    escaped = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return _END + escaped + _END


class SlipDecoder:
    """Splits a byte stream into decoded frames.

    Every ``0xC0`` ends the frame in progress and starts the next, so the ``C0 C0`` between two frames
    is an empty frame (skipped), and a stream that begins mid-frame resynchronises at its next
    delimiter. Frames longer than ``max_frame`` and frames with an escape other than ``DB DC``/``DB DD``
    are dropped whole and counted in :attr:`dropped`.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        #: frames dropped: too long, or a broken escape
        self.dropped = 0
        self._encoded = bytearray()
        #: a delimiter was seen, so the bytes gathered belong to a frame (before it: line noise)
        self._framing = False
        #: the frame in progress outgrew the limit; its bytes are discarded up to the next delimiter
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes]:
        """The frames that ``data`` completes, in order."""
        frames: list[bytes] = []
        start = 0
        while True:
            end = data.find(_END, start)
            self._gather(data[start:] if end < 0 else data[start:end])
            if end < 0:
                return frames
            frame = self._finish()
            if frame:
                frames.append(frame)
            start = end + 1

    def _gather(self, piece: bytes) -> None:
        if not self._framing or self._overflow or not piece:
            return
        # an escaped frame is at most twice as long as the decoded one
        if len(self._encoded) + len(piece) > 2 * self.max_frame:
            self._overflow = True
            self._encoded.clear()
            return
        self._encoded += piece

    def _finish(self) -> bytes | None:
        encoded = bytes(self._encoded)
        overflow, framing = self._overflow, self._framing
        self._encoded.clear()
        self._overflow = False
        self._framing = True
        if not framing:
            return None
        if overflow:
            self.dropped += 1
            return None
        decoded = encoded.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
        # every ESC must have started one of the two escapes; an ESC alone leaves one ESC too many
        escapes = encoded.count(b"\xdb\xdc") + encoded.count(b"\xdb\xdd")
        if encoded.count(b"\xdb") != escapes or len(decoded) > self.max_frame:
            self.dropped += 1
            return None
        return decoded

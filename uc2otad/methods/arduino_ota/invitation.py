"""The UDP half of an ArduinoOTA upload: the invitation datagram, its retries, and the reply channel.

The board answers every datagram to the address and port it came from (arduino-ota.md §1.2, §4.7), so
an invitation and the authentication that follows it must leave from one socket, and the answers are read
on that same socket. Unlike espota, every retry leaves from that one socket too: a board that was busy
(an earlier session it had to time out) answers the tries it queued meanwhile, one by one, and with a
fresh socket per try each such answer landed on a closed port while the board went on to wait for a
call-back that never came. The tries are the same datagram, so a late answer is as good as any.

The first tries wait briefly, then longer (:data:`FIRST_ANSWER_WAIT`, doubling up to the answer
timeout): a legacy slave acknowledges the WiFi trigger *before* it starts mDNS and ArduinoOTA
(``can_controller.cpp:2377`` vs ``:2451`` @14fa3e3), so the first invitation, sent as soon as the ack
arrives, often reaches a board that does not listen yet. A short first wait costs nothing when the
board is slow to answer: its late answer to that try still arrives on this socket.

Main constraint: datagrams from anyone but the board are ignored, and every read is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

from uc2otad.errors import UploadConnectionError

_LOGGER = logging.getLogger(__name__)

#: the longest answer a board sends: "AUTH " + 64 hex characters is 69 bytes (arduino-ota.md §2b);
#: anything longer is cut here and then refused as a bad answer
MAX_ANSWER_LEN = 128
#: seconds the first try waits for an answer; each further try waits twice as long, up to the answer
#: timeout (espota waits its whole timeout, 10 s, every time)
FIRST_ANSWER_WAIT = 0.5


class OtaCommand(IntEnum):
    """What the invitation asks the board to update (``U_FLASH`` / ``U_SPIFFS``, arduino-ota.md §1.1)."""

    #: the application, into the next OTA partition
    FLASH = 0
    #: the file system partition (SPIFFS/LittleFS)
    FILESYSTEM = 100


@dataclass(frozen=True)
class Invitation:
    """The first datagram: what to update, where to connect back, and what the image must hash to."""

    command: OtaCommand
    #: the TCP port we listen on for the board's call-back
    host_port: int
    size: int
    #: lower-case hex MD5 of the whole image
    md5: str

    def datagram(self) -> bytes:
        """``b"<cmd> <port> <size> <md5>\\n"``: single spaces, one trailing newline (§1.1)."""
        return f"{int(self.command)} {self.host_port} {self.size} {self.md5}\n".encode("ascii")


class DatagramChannel:
    """One UDP socket that talks to one board: send, and receive the board's next answer."""

    def __init__(self, board: tuple[str, int], *, local_ip: str) -> None:
        """Open the socket on ``local_ip`` (any port); the board connects back to the address it sees.

        :raises OSError: the socket cannot be opened or bound
        """
        self.board = board
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind((local_ip, 0))
        except OSError:
            self._sock.close()
            raise

    async def send(self, data: bytes) -> None:
        """:raises OSError: the datagram cannot be sent (no route to the board)"""
        await asyncio.get_running_loop().sock_sendto(self._sock, data, self.board)

    async def receive(self) -> bytes:
        """The next datagram from the board; datagrams from any other address are dropped."""
        loop = asyncio.get_running_loop()
        while True:
            data, sender = await loop.sock_recvfrom(self._sock, MAX_ANSWER_LEN)
            if sender[:2] == self.board:
                return data
            _LOGGER.debug("%s:%s: ignoring a datagram from %s", *self.board, sender)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DatagramChannel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def invite(
    board: tuple[str, int],
    invitation: Invitation,
    *,
    local_ip: str,
    answer_timeout: float,
    attempts: int,
    host: str,
) -> tuple[DatagramChannel, bytes]:
    """Send the invitation until the board answers; return the open channel and the answer.

    The caller owns the returned channel (the authentication continues on it) and must close it.

    :param local_ip: the address to send from ("" for the system's choice); the board connects back to
        the source address it sees, so this must be an address of the listening socket
    :param answer_timeout: the longest wait for an answer to one try (the first ones wait less)
    :param attempts: how many tries in all
    :param host: the board as the caller named it, for errors and logs
    :raises UploadConnectionError: no answer to any try, or the datagram cannot be sent
    """
    datagram = invitation.datagram()
    try:
        channel = DatagramChannel(board, local_ip=local_ip)
    except OSError as err:
        raise UploadConnectionError(
            f"cannot open a UDP socket: local_ip={local_ip or '*'}: {err.strerror}", host=host
        ) from err
    try:
        for attempt in range(1, attempts + 1):
            await channel.send(datagram)
            try:
                async with asyncio.timeout(min(answer_timeout, FIRST_ANSWER_WAIT * 2 ** (attempt - 1))):
                    answer = await channel.receive()
            except TimeoutError:
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                _LOGGER.log(level, "%s: no answer to invitation attempt=%d/%d", host, attempt, attempts)
                continue
            return channel, answer
    except OSError as err:
        channel.close()
        raise UploadConnectionError(
            f"cannot send the invitation: board={board[0]}:{board[1]}: {err.strerror}", host=host
        ) from err
    except BaseException:
        channel.close()
        raise
    channel.close()
    raise UploadConnectionError(
        f"no answer to the invitation: board={board[0]}:{board[1]} attempts={attempts} "
        f"timeout={answer_timeout}s",
        host=host,
    )

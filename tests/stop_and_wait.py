"""An espota-like stop-and-wait uploader: a second, independent peer for the board simulator, and the
baseline that ``bench/arduino_ota.py`` measures our streaming uploader against.

It does what every espota.py version does (arduino-ota.md §1.3, §3.2, §3.4): one invitation datagram,
read the answer on the sending socket, accept the call-back, then send 1024 bytes and wait for any answer
(``recv(10)``) before the next 1024, so each KB costs one network round trip; success when the last
answer, or one of up to five later reads, contains "OK". No authentication and no retries: the boards it
meets have no password and answer at once. Test and benchmark code, not product code; it shares nothing
with ``uc2otad.methods``.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

#: espota's chunk size (all versions, §3.2)
CHUNK_SIZE = 1024
#: espota reads at most 10 bytes of answer per chunk (§3.2)
ANSWER_SIZE = 10
#: espota's socket timeout for every wait (§1.3, §3.2)
TIMEOUT = 10.0
#: after the last chunk, espota 2.x/3.0 reads up to 5 times 32 bytes looking for "OK" (§3.4)
RESULT_READS = 5
RESULT_READ_SIZE = 32


class StopAndWaitError(Exception):
    """The upload failed; the message says at which step."""


async def stop_and_wait_upload(
    board: tuple[str, int], image: bytes, *, host_ip: str = "127.0.0.1", wait_timeout: float = TIMEOUT
) -> None:
    """Upload ``image`` to the ArduinoOTA board at ``board`` (ip, port), espota's way.

    :raises StopAndWaitError: no answer, a bad answer, no call-back, or no "OK" at the end
    """
    loop = asyncio.get_running_loop()
    md5 = hashlib.md5(image, usedforsecurity=False).hexdigest()
    with _tcp_listener(host_ip) as listener, _udp_socket(host_ip) as udp:
        port = listener.getsockname()[1]
        await loop.sock_sendto(udp, f"0 {port} {len(image)} {md5}\n".encode("ascii"), board)
        answer, _ = await _within(wait_timeout, loop.sock_recvfrom(udp, 37), "no answer to the invitation")
        if answer != b"OK":
            raise StopAndWaitError(f"bad answer: {answer!r}")
        connection, _ = await _within(wait_timeout, loop.sock_accept(listener), "no call-back")
        with connection:
            view = memoryview(image)
            last = b""
            for start in range(0, len(image), CHUNK_SIZE):
                await loop.sock_sendall(connection, view[start : start + CHUNK_SIZE])
                last = await _within(
                    wait_timeout, loop.sock_recv(connection, ANSWER_SIZE), "no answer to a chunk"
                )
                if not last:
                    raise StopAndWaitError(f"board closed the connection at offset={start}")
            if b"OK" in last:
                return
            for _ in range(RESULT_READS):
                data = await _within(
                    wait_timeout, loop.sock_recv(connection, RESULT_READ_SIZE), "no result from the board"
                )
                if b"OK" in data:
                    return
                if not data:
                    break
            raise StopAndWaitError(f"no OK from the board; last answer {last!r}")


async def _within(seconds: float, awaitable: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as err:
        raise StopAndWaitError(f"{what} within {seconds}s") from err


def _tcp_listener(host_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host_ip, 0))
    sock.listen(1)
    sock.setblocking(False)
    return sock


def _udp_socket(host_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host_ip, 0))
    sock.setblocking(False)
    return sock

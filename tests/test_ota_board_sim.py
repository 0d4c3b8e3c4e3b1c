"""The ArduinoOTA board simulator against arduino-ota.md §1-§3.5, byte by byte, over real loopback sockets.

Here the host's side is written by hand in each test (raw UDP and TCP), so every byte the board sends
is visible; then an independent espota-like stop-and-wait client must succeed against it. Our uploader
meets the simulator in ``test_arduino_ota.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from otasim import BOARD_IP, HOST_IP, NEW_VERSION, OLD_VERSION, app_image, board_config, wait_for
from stop_and_wait import stop_and_wait_upload

from uc2otad.sim.ota_auth import BoardAuth
from uc2otad.sim.ota_board import ACK_REPEATS, BoardFaults, BoardState, OtaBoard
from uc2otad.sim.ota_update import FlashTiming

IMAGE = app_image()
MD5 = hashlib.md5(IMAGE).hexdigest()
WAIT = 2.0
DIGITS = b"0123456789"


class RawHost:
    """The host's end of the protocol done by hand: one UDP socket and one TCP listener on 127.0.0.1."""

    def __init__(self, board: OtaBoard) -> None:
        self.board_address = (BOARD_IP, board.port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST_IP, 0))
        self.udp.setblocking(False)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((HOST_IP, 0))
        self.listener.listen(2)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def close(self) -> None:
        self.udp.close()
        self.listener.close()

    def invitation(self, size: int = len(IMAGE), md5: str = MD5, command: int = 0) -> bytes:
        return f"{command} {self.port} {size} {md5}\n".encode()

    async def send(self, datagram: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.udp, datagram, self.board_address)

    async def answer(self) -> tuple[bytes, tuple[str, int]]:
        async with asyncio.timeout(WAIT):
            return await asyncio.get_running_loop().sock_recvfrom(self.udp, 1024)

    def no_answer_waiting(self) -> bool:
        try:
            self.udp.recv(1024)
        except BlockingIOError:
            return True
        return False

    def no_call_back_waiting(self) -> bool:
        try:
            self.listener.accept()[0].close()
        except BlockingIOError:
            return True
        return False

    async def accept(self) -> tuple[socket.socket, str]:
        async with asyncio.timeout(WAIT):
            connection, peer = await asyncio.get_running_loop().sock_accept(self.listener)
        return connection, peer[0]

    async def invite(self, **invitation: object) -> socket.socket:
        """Invite a board without password and take its call-back."""
        await self.send(self.invitation(**invitation))  # type: ignore[arg-type]
        answer, _ = await self.answer()
        assert answer == b"OK"
        connection, _ = await self.accept()
        return connection


async def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the board sends until it closes (a reset after its last words counts as closed)."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                data = await loop.sock_recv(connection, 4096)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data


async def read_exactly(connection: socket.socket, length: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(WAIT):
        while len(received) < length:
            data = await loop.sock_recv(connection, length - len(received))
            assert data, f"closed after {received!r}"
            received += data
    return received


async def send_all(connection: socket.socket, data: bytes) -> None:
    """Send ``data``; a board that gave up and reset the connection only ends the sending."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await asyncio.get_running_loop().sock_sendall(connection, data)


@pytest.fixture
def tcp_sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
async def board() -> AsyncIterator[OtaBoard]:
    async with OtaBoard(board_config()) as board:
        yield board


@pytest.fixture
async def host(board: OtaBoard) -> AsyncIterator[RawHost]:
    host = RawHost(board)
    yield host
    host.close()


# --------------------------------------------------------------------------- UDP: invitation (§1)


async def test_invitation_is_answered_ok_without_newline_to_its_source(
    board: OtaBoard, host: RawHost
) -> None:
    await host.send(host.invitation())

    answer, sender = await host.answer()

    assert answer == b"OK"
    assert sender == (BOARD_IP, board.port)
    assert board.counters.invitations == 1


async def test_board_connects_back_from_its_own_address_to_the_invitation_source(
    board: OtaBoard, host: RawHost, tcp_sockets: list[socket.socket]
) -> None:
    await host.send(host.invitation())
    await host.answer()

    connection, peer = await host.accept()
    tcp_sockets.append(connection)

    assert peer == BOARD_IP
    assert board.state is BoardState.RUNUPDATE


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"hello\n",
        b"1 40000 1000 " + b"0" * 32 + b"\n",  # neither FLASH (0) nor SPIFFS (100)
        b"200 " + b"0" * 32 + b" " + b"0" * 32 + b"\n",  # an auth answer while IDLE
        b"0 40000 1000 0123456789abcdef\n",  # md5 too short
        b"0 40000 1000 " + b"0" * 33 + b"\n",  # md5 too long
    ],
)
async def test_malformed_invitation_gets_no_answer_and_changes_nothing(
    board: OtaBoard, host: RawHost, datagram: bytes
) -> None:
    await host.send(datagram)
    await wait_for(board, lambda b: b.counters.ignored_datagrams == 1)

    assert host.no_answer_waiting()
    assert board.state is BoardState.IDLE
    await host.send(host.invitation())
    assert (await host.answer())[0] == b"OK"


async def test_invitation_parsing_is_the_firmwares(board: OtaBoard, host: RawHost) -> None:
    """Leading spaces are skipped and the md5 is trimmed, as parseInt/readStringUntil/trim do."""
    await host.send(f"  0   {host.port} {len(IMAGE)} {MD5.upper()}  \n".encode())

    assert (await host.answer())[0] == b"OK"


async def test_image_larger_than_the_partition_gets_ok_and_then_no_call_back(
    board: OtaBoard, host: RawHost
) -> None:
    await host.send(host.invitation(size=board.config.partition_size + 1))

    assert (await host.answer())[0] == b"OK"
    await wait_for(board, lambda b: b.counters.begin_errors == 1 and b.state is BoardState.IDLE)
    assert host.no_call_back_waiting()
    assert board.last_error == "Begin ERROR: Bad Size Given"


# --------------------------------------------------------------------------- UDP: authentication (§2)


@pytest.mark.parametrize(("auth", "nonce_len"), [(BoardAuth.MD5, 32), (BoardAuth.PBKDF2, 64)])
async def test_board_with_password_challenges_with_a_nonce_of_its_scheme(
    auth: BoardAuth, nonce_len: int
) -> None:
    async with OtaBoard(board_config(password="secret", auth=auth)) as board:
        host = RawHost(board)
        try:
            await host.send(host.invitation())
            answer, _ = await host.answer()
        finally:
            host.close()

    prefix, nonce = answer.split(b" ")
    assert prefix == b"AUTH"
    assert len(nonce) == nonce_len and all(char in b"0123456789abcdef" for char in nonce)
    assert board.state is BoardState.WAITAUTH


@pytest.mark.parametrize(
    ("auth", "answer", "reply"),
    [
        # a right-length answer with a wrong response: the board says so, once
        (BoardAuth.MD5, b"200 " + b"a" * 32 + b" " + b"b" * 32 + b"\n", b"Authentication Failed"),
        (BoardAuth.PBKDF2, b"200 " + b"a" * 64 + b" " + b"b" * 64 + b"\n", b"Authentication Failed"),
        # an old host's MD5-length answer to a new board: "auth param fail", no word
        (BoardAuth.PBKDF2, b"200 " + b"a" * 32 + b" " + b"b" * 32 + b"\n", None),
        # not the auth command: back to IDLE, no word
        (BoardAuth.MD5, b"0 1 2 " + b"c" * 32 + b"\n", None),
    ],
)
async def test_failed_authentication_returns_to_idle(
    auth: BoardAuth, answer: bytes, reply: bytes | None
) -> None:
    async with OtaBoard(board_config(password="secret", auth=auth)) as board:
        host = RawHost(board)
        try:
            await host.send(host.invitation())
            await host.answer()
            await host.send(answer)
            if reply is None:
                await wait_for(board, lambda b: b.counters.ignored_datagrams == 1)
                assert host.no_answer_waiting()
            else:
                assert (await host.answer())[0] == reply
                assert board.counters.auth_failures == 1
            assert board.state is BoardState.IDLE
            # a fresh invitation is answered with a fresh challenge
            await host.send(host.invitation())
            assert (await host.answer())[0].startswith(b"AUTH ")
        finally:
            host.close()


# --------------------------------------------------------------------------- TCP: data phase (§3.2-§3.3)


async def test_acks_are_one_decimal_count_per_read_of_at_most_1460_bytes(
    board: OtaBoard, host: RawHost, tcp_sockets: list[socket.socket]
) -> None:
    connection = await host.invite()
    tcp_sockets.append(connection)

    await send_all(connection, IMAGE[:1000])
    first = await read_exactly(connection, 4)
    await send_all(connection, IMAGE[1000:4000])  # one segment: read as 1460 + 1460 + 80
    second = await read_exactly(connection, 10)

    assert (first, second) == (b"1000", b"1460146080")
    assert board.counters.largest_read == 1460


async def test_whole_image_ends_with_ok_and_a_reboot_into_it(
    board: OtaBoard, host: RawHost, tcp_sockets: list[socket.socket]
) -> None:
    assert board.running_version == OLD_VERSION
    connection = await host.invite()
    tcp_sockets.append(connection)

    await send_all(connection, IMAGE)
    stream = await read_until_closed(connection)

    assert stream.lstrip(DIGITS) == b"OK"
    await wait_for(board, lambda b: b.boots == 1 and b.state is BoardState.IDLE)
    assert board.running_image == IMAGE
    assert board.running_version == NEW_VERSION


async def test_datagrams_during_the_reboot_are_lost() -> None:
    async with OtaBoard(board_config(reboot_time=0.2)) as board:
        host = RawHost(board)
        try:
            connection = await host.invite()
            with connection:
                await send_all(connection, IMAGE)
                await read_until_closed(connection)
            await wait_for(board, lambda b: b.state is BoardState.REBOOTING)
            await host.send(host.invitation())
            await wait_for(board, lambda b: b.counters.ignored_datagrams == 1)
            await wait_for(board, lambda b: b.state is BoardState.IDLE)
            assert host.no_answer_waiting()
        finally:
            host.close()


async def test_idle_board_repeats_its_last_ack_three_times_then_gives_up(
    board: OtaBoard, host: RawHost, tcp_sockets: list[socket.socket]
) -> None:
    connection = await host.invite()
    tcp_sockets.append(connection)

    await send_all(connection, IMAGE[:1000])
    stream = await read_until_closed(connection)

    assert stream == b"1000" * (1 + ACK_REPEATS)  # no error text: "Receive Failed" is only logged
    await wait_for(board, lambda b: b.state is BoardState.IDLE)
    assert board.last_error == "Receive Failed"
    assert board.running_version == OLD_VERSION


@pytest.mark.parametrize(
    ("image", "md5", "words"),
    [
        # the magic is checked only when the first 4 KB sector is flushed
        (b"\x00" + IMAGE[1:], hashlib.md5(b"\x00" + IMAGE[1:]).hexdigest(), b"Wrong Magic Byte\r\n"),
        (IMAGE, "f" * 32, b"MD5 Check Failed\r\n"),
    ],
)
async def test_refused_image_ends_with_the_error_string_and_crlf(
    board: OtaBoard, host: RawHost, tcp_sockets: list[socket.socket], image: bytes, md5: str, words: bytes
) -> None:
    connection = await host.invite(md5=md5)
    tcp_sockets.append(connection)

    await send_all(connection, image)
    stream = await read_until_closed(connection)

    assert stream.lstrip(DIGITS) == words, stream
    await wait_for(board, lambda b: b.state is BoardState.IDLE)
    assert board.last_error == words.decode().strip()
    assert board.running_version == OLD_VERSION


async def test_network_delay_does_not_hold_up_the_boards_reading(tcp_sockets: list[socket.socket]) -> None:
    """The acks of the whole image are still on their way when the board has read all of it."""
    # the board connects back before its delayed "OK" reaches us: its idle timeout must outlast that
    async with OtaBoard(board_config(idle_timeout=1.0), faults=BoardFaults(network_delay=0.3)) as board:
        host = RawHost(board)
        try:
            connection = await host.invite()
            tcp_sockets.append(connection)
            await send_all(connection, IMAGE)
            await wait_for(board, lambda b: b.counters.bytes_received == len(IMAGE))
            with pytest.raises(BlockingIOError):
                connection.recv(1)
            stream = await read_until_closed(connection)
        finally:
            host.close()

    assert stream.lstrip(DIGITS) == b"OK"


# --------------------------------------------------------------------------- an independent peer


# Not with random read sizes: espota reads 10 bytes per chunk, so split acks pile up, and its five
# 32-byte reads at the end then miss the "OK" behind them, as the real espota would.
@pytest.mark.parametrize(
    "faults",
    [
        BoardFaults(),
        BoardFaults(network_delay=0.001),
        BoardFaults(flash=FlashTiming(sector_write=0.001, block_erase=0.01, sector_erase=0.005)),
    ],
    ids=["plain", "network-delay", "slow-flash"],
)
async def test_stop_and_wait_client_uploads_the_same_bytes(faults: BoardFaults) -> None:
    async with OtaBoard(board_config(), faults=faults) as board:
        await stop_and_wait_upload((BOARD_IP, board.port), IMAGE, host_ip=HOST_IP)
        await wait_for(board, lambda b: b.boots == 1)

    assert board.running_image == IMAGE
    assert board.counters.acks == board.counters.reads
    assert board.counters.largest_read <= 1460


async def test_slow_flash_is_accounted_per_erase_and_write() -> None:
    timing = FlashTiming(sector_write=0.001, sector_erase=0.002, block_erase=0.004)
    async with OtaBoard(board_config(), faults=BoardFaults(flash=timing)) as board:
        await stop_and_wait_upload((BOARD_IP, board.port), IMAGE, host_ip=HOST_IP)

    sectors = -(-len(IMAGE) // 4096)
    blocks = len(IMAGE) // 0x10000
    tail_sectors = sectors - blocks * 16
    expected = sectors * 0.001 + blocks * 0.004 + tail_sectors * 0.002
    assert board.counters.flash_seconds == pytest.approx(expected)

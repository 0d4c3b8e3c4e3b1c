"""Our ArduinoOTA uploader against the board simulator, over real loopback sockets.

Each case checks what a user of the daemon would see: the result or the typed error (with the status
dict's ``error_code`` and the board's own words), and what the board ends up running. The simulator is
written from the spec, never from the uploader, so the two only agree if both follow it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from typing import Any, Protocol

import pytest
from otasim import BOARD_IP, HOST_IP, NEW_VERSION, OLD_VERSION, app_image, board_config, wait_for

from uc2otad.errors import (
    ImageTooLargeError,
    UploadAuthError,
    UploadConnectionError,
    UploadTimeoutError,
    UploadVerificationError,
)
from uc2otad.methods.arduino_ota import (
    ArduinoOtaUploader,
    AuthScheme,
    OtaCommand,
    UploadSettings,
    UploadState,
)
from uc2otad.sim.ota_auth import BoardAuth
from uc2otad.sim.ota_board import BoardFaults, BoardState, OtaBoard, OtaBoardConfig
from uc2otad.sim.ota_update import FlashTiming

IMAGE = app_image()
PASSWORD = "correct horse battery"
#: every wait shrunk so that each failure shows within a second
FAST = UploadSettings(
    invite_timeout=0.3,
    invite_attempts=2,
    auth_timeout=0.3,
    accept_timeout=0.5,
    chunk_timeout=0.5,
    overall_timeout=5.0,
    host_ip=HOST_IP,
)
#: slow enough that an upload is still running when a test acts on it (about 0.3 s for IMAGE)
SLOW_FLASH = FlashTiming(sector_write=0.01)


class StartBoard(Protocol):
    def __call__(
        self, config: OtaBoardConfig | None = None, faults: BoardFaults | None = None
    ) -> Awaitable[OtaBoard]: ...


@pytest.fixture
async def start_board() -> AsyncIterator[StartBoard]:
    """``await start_board(config, faults)``: a running simulated board, stopped after the test."""
    boards: list[OtaBoard] = []

    async def start(config: OtaBoardConfig | None = None, faults: BoardFaults | None = None) -> OtaBoard:
        board = OtaBoard(config or board_config(), faults=faults)
        await board.start()
        boards.append(board)
        return board

    yield start
    for board in boards:
        await board.stop()


def uploader_for(board: OtaBoard, password: str | None = None, **settings: Any) -> ArduinoOtaUploader:
    """An uploader for ``board`` with the FAST settings, ``settings`` changed."""
    return ArduinoOtaUploader(
        BOARD_IP, port=board.port, password=password, settings=replace(FAST, **settings)
    )


async def rebooted_into(board: OtaBoard, image: bytes) -> bool:
    await wait_for(board, lambda b: b.boots == 1 and b.state is BoardState.IDLE)
    return board.running_image == image


async def back_to_idle_unchanged(board: OtaBoard) -> bool:
    """The board gave up on the update and still runs its old image."""
    await wait_for(board, lambda b: b.state is BoardState.IDLE and b.counters.failed_updates == 1)
    return board.running_version == OLD_VERSION and board.boots == 0


# --------------------------------------------------------------------------- success


async def test_upload_without_password_reaches_the_board_byte_exact(start_board: StartBoard) -> None:
    board = await start_board()
    uploader = uploader_for(board)
    percents: list[int] = []

    result = await uploader.upload(IMAGE, progress=percents.append)

    assert (result.size, result.address, result.auth) == (len(IMAGE), BOARD_IP, None)
    assert uploader.state is UploadState.DONE
    assert await rebooted_into(board, IMAGE)
    assert board.running_version == NEW_VERSION
    assert percents[0] == 0 and percents[-1] == 100
    assert percents == sorted(set(percents))
    assert set(range(0, 101, 10)) <= set(percents)


@pytest.mark.parametrize(
    ("auth", "md5_hash", "scheme", "invitations"),
    [
        (BoardAuth.MD5, False, AuthScheme.MD5, 1),
        (BoardAuth.PBKDF2, False, AuthScheme.PBKDF2_SHA256, 1),
        # a sketch that stores an MD5 hash: SHA-256 is refused, a fresh invitation tries MD5 (§2b)
        (BoardAuth.PBKDF2, True, AuthScheme.PBKDF2_MD5, 2),
    ],
)
async def test_both_authentication_schemes(
    start_board: StartBoard, auth: BoardAuth, md5_hash: bool, scheme: AuthScheme, invitations: int
) -> None:
    board = await start_board(board_config(password=PASSWORD, auth=auth, password_is_md5_hash=md5_hash))

    result = await uploader_for(board, PASSWORD).upload(IMAGE)

    assert result.auth is scheme
    assert board.counters.invitations == invitations
    assert await rebooted_into(board, IMAGE)


@pytest.mark.parametrize(
    "faults",
    [
        # the board reads random sizes: acks split and merge in every way
        BoardFaults(random_read_seed=1),
        BoardFaults(random_read_seed=2, network_delay=0.01),
        BoardFaults(random_read_seed=3, flash=FlashTiming(sector_write=0.002, block_erase=0.02)),
    ],
    ids=["random-reads", "random-reads-delayed", "random-reads-slow-flash"],
)
async def test_split_and_merged_acks_still_deliver_the_image(
    start_board: StartBoard, faults: BoardFaults
) -> None:
    board = await start_board(faults=faults)

    await uploader_for(board).upload(IMAGE)

    assert await rebooted_into(board, IMAGE)
    assert board.counters.largest_read <= 1460
    assert board.counters.reads > len(IMAGE) // 1460


async def test_fixed_host_port_for_firewalls(start_board: StartBoard) -> None:
    board = await start_board()
    with socket.socket() as probe:
        probe.bind((HOST_IP, 0))
        port = probe.getsockname()[1]

    for _ in range(2):  # the same port again right away: SO_REUSEADDR
        await uploader_for(board, host_port=port).upload(IMAGE)
        await wait_for(board, lambda b: b.state is BoardState.IDLE)

    assert board.counters.updates == 2


async def test_filesystem_image_needs_no_magic_byte(start_board: StartBoard) -> None:
    board = await start_board()
    filesystem = bytes(range(256)) * 300

    await uploader_for(board).upload(filesystem, command=OtaCommand.FILESYSTEM)

    await wait_for(board, lambda b: b.filesystem_image is not None)
    assert board.filesystem_image == filesystem
    assert board.running_version == OLD_VERSION


# --------------------------------------------------------------------------- code 1: connection failed


@pytest.mark.parametrize(
    ("config", "faults", "refusals"),
    [
        (board_config(password="another password"), None, 1),
        (board_config(password=PASSWORD), BoardFaults(wrong_password=True), 1),
        # a PBKDF2 board is asked twice: SHA-256 hash, then the MD5 fallback
        (board_config(password="another password", auth=BoardAuth.PBKDF2), None, 2),
    ],
    ids=["wrong-password", "board-refuses", "pbkdf2-both-hashes"],
)
async def test_refused_password_is_an_auth_failure_with_the_boards_words(
    start_board: StartBoard, config: OtaBoardConfig, faults: BoardFaults | None, refusals: int
) -> None:
    board = await start_board(config, faults)

    with pytest.raises(UploadAuthError) as caught:
        await uploader_for(board, PASSWORD).upload(IMAGE)

    assert caught.value.error_code == "ota_auth_failed"  # its own code: not retried (issue 20)
    assert caught.value.board_text == "Authentication Failed"
    assert board.counters.auth_failures == refusals
    assert board.counters.sessions == 0


async def test_board_that_wants_a_password_we_do_not_have(start_board: StartBoard) -> None:
    board = await start_board(board_config(password=PASSWORD))

    with pytest.raises(UploadAuthError, match="none was given"):
        await uploader_for(board, None).upload(IMAGE)


@pytest.fixture
def silent_board() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket on the board's address that receives invitations and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((BOARD_IP, 0))
        sock.setblocking(False)
        yield sock, sock.getsockname()[1]


async def test_no_board_fails_after_the_configured_invitations(
    silent_board: tuple[socket.socket, int],
) -> None:
    sock, port = silent_board
    uploader = ArduinoOtaUploader(
        BOARD_IP, port=port, settings=replace(FAST, invite_attempts=3, invite_timeout=0.1)
    )

    with pytest.raises(UploadConnectionError, match="attempts=3") as caught:
        await uploader.upload(IMAGE)

    invitations = []
    while True:
        try:
            invitations.append(sock.recvfrom(1024))
        except BlockingIOError:
            break
    assert caught.value.error_code == "upload_connection_failed"
    assert len(invitations) == 3
    assert len({source for _, source in invitations}) == 1  # one socket: a late answer still arrives
    assert invitations[0][0].startswith(b"0 ") and invitations[0][0].endswith(b"\n")
    assert uploader.state is UploadState.FAILED


async def test_board_closing_at_half_way_is_a_connection_failure(start_board: StartBoard) -> None:
    board = await start_board(faults=BoardFaults(drop_at_percent=50))

    with pytest.raises(UploadConnectionError, match="closed the connection") as caught:
        await uploader_for(board).upload(IMAGE)

    assert caught.value.board_text is None
    assert not isinstance(caught.value, UploadAuthError)
    assert await back_to_idle_unchanged(board)


async def test_no_call_back_is_a_connection_failure(start_board: StartBoard) -> None:
    """The board says "OK" and then cannot begin (here: it has a smaller partition than we were told)."""
    board = await start_board(board_config(partition_size=0x10000))

    with pytest.raises(UploadConnectionError, match="did not connect back"):
        await uploader_for(board, accept_timeout=0.2).upload(IMAGE)

    assert board.counters.begin_errors == 1


async def test_only_the_board_may_connect_back(silent_board: tuple[socket.socket, int]) -> None:
    """A connection from another address, even one that comes first, is closed unread.

    The board is played by hand here (arduino-ota.md §1-§3), so that a stranger can connect before it.
    """
    udp, port = silent_board
    loop = asyncio.get_running_loop()
    upload = asyncio.create_task(ArduinoOtaUploader(BOARD_IP, port=port, settings=FAST).upload(IMAGE))
    with socket.socket() as stranger, socket.socket() as board:
        async with asyncio.timeout(2):
            invitation, host = await loop.sock_recvfrom(udp, 1024)
            host_port = int(invitation.split()[1])
            stranger.setblocking(False)
            await loop.sock_connect(stranger, (HOST_IP, host_port))  # from 127.0.0.1
            await loop.sock_sendto(udp, b"OK", host)
            board.bind((BOARD_IP, 0))
            board.setblocking(False)
            await loop.sock_connect(board, (HOST_IP, host_port))
            received = b""
            while len(received) < len(IMAGE):
                received += await loop.sock_recv(board, 65536)
            await loop.sock_sendall(board, b"OK")
            result = await upload
            stranger_got = await loop.sock_recv(stranger, 1024)

    assert received == IMAGE
    assert result.size == len(IMAGE)
    assert stranger_got == b""  # closed without a byte of the image


async def test_oversize_image_is_refused_before_anything_is_sent(start_board: StartBoard) -> None:
    board = await start_board()
    oversize = IMAGE + bytes(board.config.partition_size)

    with pytest.raises(ImageTooLargeError, match="max_size=1310720"):
        await uploader_for(board).upload(oversize)

    assert board.counters.invitations == board.counters.ignored_datagrams == 0


# --------------------------------------------------------------------------- code 2: timeout


async def test_stalled_board_is_an_upload_timeout(start_board: StartBoard) -> None:
    board = await start_board(faults=BoardFaults(stall_at_percent=50))

    with pytest.raises(UploadTimeoutError, match=r"chunk_timeout=0\.3") as caught:
        await uploader_for(board, chunk_timeout=0.3).upload(IMAGE)

    assert caught.value.error_code == "upload_timeout"
    assert isinstance(caught.value, TimeoutError)
    assert board.running_version == OLD_VERSION


async def test_overall_timeout_bounds_a_slow_but_moving_upload(start_board: StartBoard) -> None:
    board = await start_board(faults=BoardFaults(flash=SLOW_FLASH))

    with pytest.raises(UploadTimeoutError, match=r"overall_timeout=0\.1"):
        await uploader_for(board, overall_timeout=0.1).upload(IMAGE)


# --------------------------------------------------------------------------- code 3: verification


@pytest.mark.parametrize(
    ("image", "faults", "words"),
    [
        (IMAGE, BoardFaults(corrupt_offset=5000), "MD5 Check Failed"),
        (IMAGE, BoardFaults(flash_write_error_at=70_000), "Flash Write Failed"),
        (b"\x00" + IMAGE[1:], BoardFaults(), "Wrong Magic Byte"),
    ],
    ids=["md5", "flash-write", "magic"],
)
async def test_board_error_text_is_a_verification_failure(
    start_board: StartBoard, image: bytes, faults: BoardFaults, words: str
) -> None:
    board = await start_board(faults=faults)

    with pytest.raises(UploadVerificationError) as caught:
        await uploader_for(board).upload(image)

    assert caught.value.error_code == "verification_failed"
    assert caught.value.board_text == words
    assert words in str(caught.value)
    assert await back_to_idle_unchanged(board)


# --------------------------------------------------------------------------- cancel, secrets


async def test_cancel_closes_the_connection_and_the_board_keeps_its_image(start_board: StartBoard) -> None:
    board = await start_board(faults=BoardFaults(flash=SLOW_FLASH))
    uploader = uploader_for(board)
    task = asyncio.create_task(uploader.upload(IMAGE))
    await wait_for(board, lambda b: b.counters.bytes_received > 0)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert uploader.state is UploadState.FAILED
    # the board sees the connection end, gives up ("Aborted") and keeps the old image
    assert await back_to_idle_unchanged(board)
    assert board.last_error == "Aborted"


async def test_password_is_never_logged_or_shown(
    start_board: StartBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    board = await start_board(
        board_config(password=PASSWORD, auth=BoardAuth.PBKDF2, password_is_md5_hash=True)
    )
    uploader = uploader_for(board, PASSWORD)
    await uploader.upload(IMAGE)
    wrong = uploader_for(board, "not " + PASSWORD)
    await wait_for(board, lambda b: b.state is BoardState.IDLE)
    with pytest.raises(UploadAuthError) as caught:
        await wrong.upload(IMAGE)

    shown = caplog.text + str(caught.value) + repr(caught.value) + repr(uploader) + repr(wrong)
    assert "MD5" in caplog.text or "md5" in caplog.text  # the fallback was logged…
    assert PASSWORD not in shown  # …but never the password

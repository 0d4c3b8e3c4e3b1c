"""Upload an image to a board's ArduinoOTA service: wire-compatible with espota.py, faster and honest.

The exchange (arduino-ota.md §1-§3): we listen on TCP, invite the board over UDP, answer its
authentication challenge when it sends one, and the board connects back and receives the image. espota
sends 1 KB and then waits for an answer, every time: one network round trip per KB, which with an ESP32 in
WiFi modem-sleep (tens of ms per answer) is most of the 20-60 s the procedure document quotes. The board
does not need that: it reads whatever has arrived. So we stream the image while a second task drains the
board's acks (so the board's writes never block), and TCP flow control alone paces the transfer (§6).

Success is the board's ``"OK"`` and nothing else; an error text fails the upload with that text whatever
came before (the newest espota reports success even on "MD5 Check Failed", §3.4).

Main constraint: one event loop, no threads except for hashing; every wait has a named timeout that
:class:`UploadSettings` overrides; cancelling the caller closes every socket. The password is used for the
answer to the challenge and never logged, repr'd or put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from uc2otad.errors import (
    ConfigError,
    ImageFormatError,
    ImageTooLargeError,
    UploadAuthError,
    UploadConnectionError,
    UploadTimeoutError,
    UploadVerificationError,
)
from uc2otad.firmware.esp_image import OTA_PARTITION_SIZE
from uc2otad.methods.arduino_ota.auth import AuthScheme, auth_datagram, cnonce_text, schemes_for_nonce
from uc2otad.methods.arduino_ota.invitation import DatagramChannel, Invitation, OtaCommand, invite
from uc2otad.methods.arduino_ota.replies import BoardReplyParser, FinalReply, ReplyKind

_LOGGER = logging.getLogger(__name__)

# ARDUINO_OTA_PORT, INVITE_TIMEOUT and CHUNK_TIMEOUT are also the defaults of the wifi.ota_port,
# wifi.invite_timeout and wifi.chunk_timeout settings; the composition root (uc2otad/compose.py) reads
# them only when the first WiFi job starts, so that this module stays unloaded while the daemon is idle
#: the board's UDP port unless the sketch calls ``ArduinoOTA.setPort`` (arduino-ota.md §1)
ARDUINO_OTA_PORT = 3232

#: wait for an answer to each invitation: espota's ``-t`` default, 10 s (arduino-ota.md §1.3)
INVITE_TIMEOUT = 10.0
#: invitations in all before "no answer": espota's loop of 10 (§1.3)
INVITE_ATTEMPTS = 10
#: wait for the answer to the authentication datagram: espota's 10 s (§2a, §2b)
AUTH_TIMEOUT = 10.0
#: wait for the board to connect back: espota's accept timeout, 10 s (§3.1)
ACCEPT_TIMEOUT = 10.0
#: no byte sent or received for this long: stalled. The procedure document: "Timeout: 20 seconds per
#: chunk" (Phase 5); it also bounds the wait for the board's result after the last byte
CHUNK_TIMEOUT = 20.0
#: the whole upload, invitation to result: the document's default OTA timeout (300000 ms), so an upload
#: can never outlast the job that runs it
OVERALL_TIMEOUT = 300.0

#: bytes per send; only the granularity of progress and of the chunk timeout depends on it (ESPHome sends
#: 8 KB blocks, arduino-ota.md §6)
SEND_BLOCK = 8192
#: our kernel send buffer. Progress counts bytes handed to the kernel, so a small buffer keeps it within
#: ~32 KB (Linux doubles the value) of what the board has; the board's own TCP window is 5760 bytes
#: (lwIP CONFIG_LWIP_TCP_WND_DEFAULT), so this never starves the link
SEND_BUFFER = 16 * 1024
#: bytes per read of the board's acks: far more than it sends between two of our reads
RECEIVE_SIZE = 1024

_OK = b"OK"
_AUTH_PREFIX = b"AUTH "
_AUTH_FAILED = b"Authentication Failed"


class UploadState(Enum):
    """Where an upload is.

    IDLE → LISTENING → INVITING → [AUTHENTICATING →] WAITING_FOR_BOARD → SENDING → WAITING_FOR_RESULT
    → DONE. AUTHENTICATING → INVITING is the PBKDF2 fallback: the board refused the SHA-256 password hash
    and forgot the nonce, so a fresh invitation tries the MD5 hash. Any state → FAILED on an error or a
    cancel. DONE and FAILED are final for one upload; the next :meth:`ArduinoOtaUploader.upload` starts
    again at LISTENING.
    """

    IDLE = "idle"
    LISTENING = "listening"
    INVITING = "inviting"
    AUTHENTICATING = "authenticating"
    WAITING_FOR_BOARD = "waiting_for_board"
    SENDING = "sending"
    WAITING_FOR_RESULT = "waiting_for_result"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class UploadSettings:
    """Timeouts, limits and the listening address; the defaults are the documents' numbers (see above)."""

    invite_timeout: float = INVITE_TIMEOUT
    invite_attempts: int = INVITE_ATTEMPTS
    auth_timeout: float = AUTH_TIMEOUT
    accept_timeout: float = ACCEPT_TIMEOUT
    chunk_timeout: float = CHUNK_TIMEOUT
    overall_timeout: float = OVERALL_TIMEOUT
    #: address to listen on and send from; "" = all IPv4 addresses (the board connects back to the
    #: address its invitation came from, so on a multi-homed host name the one the board can reach)
    host_ip: str = ""
    #: TCP port for the board's call-back; 0 = a random free port. Behind a firewall set a fixed port and
    #: open it for the boards' network (espota's ``-P``; ImSwitch used 3333)
    host_port: int = 0
    #: refuse larger images before inviting: the board would only fail silently after its "OK" (§4.5);
    #: the slaves' OTA partitions are 0x140000 bytes
    max_size: int = OTA_PARTITION_SIZE

    def __post_init__(self) -> None:
        for key in ("invite_timeout", "auth_timeout", "accept_timeout", "chunk_timeout", "overall_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(key, f"must be a positive number of seconds, not {getattr(self, key)!r}")
        if self.invite_attempts < 1:
            raise ConfigError("invite_attempts", f"must be at least 1, not {self.invite_attempts}")
        if not 0 <= self.host_port <= 0xFFFF:
            raise ConfigError("host_port", f"must be 0 (random) or a TCP port, not {self.host_port}")
        if self.max_size < 1:
            raise ConfigError("max_size", f"must be positive, not {self.max_size}")


@dataclass(frozen=True)
class UploadResult:
    """A board took the image: it verified the MD5 and will boot it."""

    host: str
    #: the IPv4 address the host name resolved to, which the board connected back from
    address: str
    size: int
    md5: str
    #: the scheme that authenticated us, None when the board asked for no password
    auth: AuthScheme | None
    #: invitation to "OK"
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else float("inf")


class _ProgressReport:
    """Calls back with every whole percent once, in order: 0, 1, …, 100.

    A block of the image may span several percents; each of them is still reported, so a caller that
    acts on every 10 % step (the procedure document's progress events) never misses one.
    """

    def __init__(self, callback: Callable[[int], None] | None, total: int) -> None:
        self._callback = callback
        self._total = total
        self._last = -1

    def update(self, done: int) -> None:
        if self._callback is None:
            return
        percent = done * 100 // self._total
        while self._last < percent:
            self._last += 1
            self._callback(self._last)


class ArduinoOtaUploader:
    """Uploads images to one board; one upload at a time.

    :param host: the board's IPv4 address or host name (``UC2-CAN-B.local``)
    :param port: the board's ArduinoOTA UDP port
    :param password: the OTA password, None when the board has none
    :param settings: timeouts and listening address; defaults from the module constants
    """

    def __init__(
        self,
        host: str,
        *,
        port: int = ARDUINO_OTA_PORT,
        password: str | None = None,
        settings: UploadSettings | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.settings = settings or UploadSettings()
        self._password = password
        self._state = UploadState.IDLE
        self._sent = 0
        self._log_name = f"ota {host}:{port}"

    def __repr__(self) -> str:
        return f"ArduinoOtaUploader({self.host!r}, port={self.port}, state={self._state.value})"

    @property
    def state(self) -> UploadState:
        return self._state

    async def upload(
        self,
        image: bytes,
        *,
        filename: str = "firmware.bin",
        command: OtaCommand = OtaCommand.FLASH,
        progress: Callable[[int], None] | None = None,
    ) -> UploadResult:
        """Send ``image`` to the board and return once the board answered "OK".

        :param filename: the file name as the user gave it; only hashed into the client nonce, as espota does
        :param command: FLASH for an application, FILESYSTEM for a file system image
        :param progress: called with each whole percent of the image sent, 0 to 100, in order
        :raises ImageFormatError: the image is empty
        :raises ImageTooLargeError: larger than ``settings.max_size``; nothing was sent
        :raises UploadAuthError: the board refused the password, or asked for one and none was given
        :raises UploadConnectionError: cannot listen, no answer to the invitation, a bad answer, no call-back
            from the board, or the board closed the connection without a word
        :raises UploadTimeoutError: no byte moved within ``chunk_timeout``, or the upload outlasted
            ``overall_timeout``
        :raises UploadVerificationError: the board received the image and reports an error
            (``board_text`` holds its words, e.g. "MD5 Check Failed")
        :raises RuntimeError: an upload is already running on this uploader
        """
        if self._state not in (UploadState.IDLE, UploadState.DONE, UploadState.FAILED):
            raise RuntimeError(f"{self!r}: an upload is already running")
        self._check_size(image, filename)
        self._sent = 0
        try:
            async with asyncio.timeout(self.settings.overall_timeout) as overall:
                result = await self._upload(image, filename, command, _ProgressReport(progress, len(image)))
        except TimeoutError as err:
            self._set_state(UploadState.FAILED)
            if overall.expired():
                raise UploadTimeoutError(
                    f"upload outlasted overall_timeout={self.settings.overall_timeout}s: "
                    f"sent={self._sent} size={len(image)}",
                    host=self.host,
                ) from err
            raise
        except BaseException:
            self._set_state(UploadState.FAILED)
            raise
        self._set_state(UploadState.DONE)
        return result

    # ---- phases ----------------------------------------------------------------------------------------

    def _check_size(self, image: bytes, filename: str) -> None:
        if not image:
            raise ImageFormatError("empty image: size=0", name=filename)
        if len(image) > self.settings.max_size:
            raise ImageTooLargeError(
                f"image larger than the OTA partition: size={len(image)} max_size={self.settings.max_size}",
                name=filename,
            )

    async def _upload(
        self, image: bytes, filename: str, command: OtaCommand, progress: _ProgressReport
    ) -> UploadResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        md5 = await asyncio.to_thread(_md5_hex, image)
        address = await self._resolve()
        with contextlib.ExitStack() as stack:
            # listen before inviting: the board connects back as soon as it accepted (§3.1)
            listener = stack.enter_context(self._listen())
            self._set_state(UploadState.LISTENING)
            invitation = Invitation(command, listener.getsockname()[1], len(image), md5)
            scheme = await self._handshake(
                address, invitation, cnonce_text(filename, len(image), md5, address)
            )
            connection = stack.enter_context(await self._accept(listener, address, started))
            listener.close()
            reply = await self._exchange(connection, image, progress)
        seconds = loop.time() - started
        self._raise_unless_ok(reply, len(image))
        _LOGGER.info(
            "%s: board accepted size=%d in %0.1fs (%0.0f KiB/s)",
            self._log_name,
            len(image),
            seconds,
            len(image) / seconds / 1024,
        )
        return UploadResult(self.host, address, len(image), md5, scheme, seconds)

    async def _resolve(self) -> str:
        """The board's IPv4 address: the call-back must come from it."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
        except OSError as err:
            raise UploadConnectionError(f"cannot resolve host={self.host}: {err}", host=self.host) from err
        return str(infos[0][4][0])

    def _listen(self) -> socket.socket:
        settings = self.settings
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # a fixed host_port must be reusable right after the previous upload (TIME_WAIT)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((settings.host_ip, settings.host_port))
            listener.listen(1)
            listener.setblocking(False)
        except OSError as err:
            listener.close()
            raise UploadConnectionError(
                f"cannot listen for the board: host_ip={settings.host_ip or '*'} "
                f"host_port={settings.host_port}: {err.strerror}",
                host=self.host,
            ) from err
        return listener

    async def _handshake(self, address: str, invitation: Invitation, cnonce_source: str) -> AuthScheme | None:
        """Invite the board and authenticate; the scheme that worked, None when no password was asked."""
        tried: list[AuthScheme] = []
        while True:
            self._set_state(UploadState.INVITING)
            channel, answer = await invite(
                (address, self.port),
                invitation,
                local_ip=self.settings.host_ip,
                answer_timeout=self.settings.invite_timeout,
                attempts=self.settings.invite_attempts,
                host=self.host,
            )
            with channel:
                if answer == _OK:
                    return None
                nonce = self._nonce_of(answer)
                if self._password is None:
                    raise UploadAuthError("the board asks for a password and none was given", host=self.host)
                # never empty: we only come back here after a first PBKDF2 scheme failed
                schemes = [scheme for scheme in schemes_for_nonce(nonce) if scheme not in tried]
                scheme = schemes[0]
                self._set_state(UploadState.AUTHENTICATING)
                answer = await self._authenticate(channel, scheme, self._password, nonce, cnonce_source)
            if answer == _OK:
                return scheme
            if answer != _AUTH_FAILED:
                raise UploadConnectionError(
                    f"unexpected answer to the authentication: answer={_shown(answer)}",
                    host=self.host,
                    board_text=_shown(answer),
                )
            tried.append(scheme)
            if len(schemes) == 1:
                raise UploadAuthError(
                    f"the board refused the password: {_shown(answer)!r} tried={','.join(tried)}",
                    host=self.host,
                    board_text=_shown(answer),
                )
            _LOGGER.info("%s: %s refused; inviting again to try %s", self._log_name, scheme, schemes[1])

    def _nonce_of(self, answer: bytes) -> str:
        """The nonce of ``AUTH <nonce>``, checked to be one that a scheme fits and that we can answer."""
        if not answer.startswith(_AUTH_PREFIX):
            raise UploadConnectionError(
                f"unexpected answer to the invitation: answer={_shown(answer)}",
                host=self.host,
                board_text=_shown(answer),
            )
        nonce = answer[len(_AUTH_PREFIX) :].decode("ascii", errors="replace").strip()
        if not schemes_for_nonce(nonce):
            raise UploadConnectionError(
                f"the board's nonce fits no known scheme: length={len(nonce)}",
                host=self.host,
                board_text=_shown(answer),
            )
        return nonce

    async def _authenticate(
        self, channel: DatagramChannel, scheme: AuthScheme, password: str, nonce: str, cnonce_source: str
    ) -> bytes:
        """Answer the challenge on the invitation's own channel and return the board's verdict."""
        # PBKDF2 takes several milliseconds: off the loop
        datagram = await asyncio.to_thread(auth_datagram, scheme, password, nonce, cnonce_source)
        try:
            await channel.send(datagram)
            async with asyncio.timeout(self.settings.auth_timeout):
                return await channel.receive()
        except TimeoutError as err:
            raise UploadConnectionError(
                f"no answer to the authentication: scheme={scheme} timeout={self.settings.auth_timeout}s",
                host=self.host,
            ) from err
        except OSError as err:
            raise UploadConnectionError(
                f"cannot send the authentication: {err.strerror}", host=self.host
            ) from err

    async def _accept(self, listener: socket.socket, address: str, started: float) -> socket.socket:
        """The board's call-back; connections from any other address are closed at once."""
        self._set_state(UploadState.WAITING_FOR_BOARD)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.accept_timeout):
                while True:
                    connection, peer = await loop.sock_accept(listener)
                    if peer[0] == address:
                        break
                    _LOGGER.warning(
                        "%s: closing a connection from peer=%s: not the board", self._log_name, peer[0]
                    )
                    connection.close()
        except TimeoutError as err:
            raise UploadConnectionError(
                f"the board did not connect back within accept_timeout={self.settings.accept_timeout}s: "
                f"is port={listener.getsockname()[1]} reachable from the board?",
                host=self.host,
            ) from err
        except OSError as err:
            raise UploadConnectionError(
                f"cannot accept the board's connection: {err}", host=self.host
            ) from err
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        _LOGGER.info("%s: board connected back in %0.3fs", self._log_name, loop.time() - started)
        return connection

    async def _exchange(
        self, connection: socket.socket, image: bytes, progress: _ProgressReport
    ) -> FinalReply:
        """Stream the image while reading the board's acks; the board's final reply.

        Sending and reading run side by side: a board that is still being sent to may already have
        given up (its "Wrong Magic Byte" comes after the first 4 KB), and its words must win over the
        broken pipe that our next send then meets.
        """
        loop = asyncio.get_running_loop()
        chunk_timeout = self.settings.chunk_timeout
        self._set_state(UploadState.SENDING)
        try:
            async with asyncio.timeout(chunk_timeout) as idle:

                def alive() -> None:
                    idle.reschedule(loop.time() + chunk_timeout)

                sender = asyncio.create_task(self._send_image(connection, image, progress, alive))
                receiver = asyncio.create_task(self._read_reply(connection, alive))
                try:
                    await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
                    if sender.done():
                        sender.result()  # a bug in sending surfaces now; a lost connection returned normally
                    return await receiver
                finally:
                    sender.cancel()
                    receiver.cancel()
                    await asyncio.wait((sender, receiver))
        except TimeoutError as err:
            waiting = "the board's result" if self._sent == len(image) else "the board to take more"
            raise UploadTimeoutError(
                f"no progress within chunk_timeout={chunk_timeout}s waiting for {waiting}: "
                f"sent={self._sent} size={len(image)}",
                host=self.host,
            ) from err

    async def _send_image(
        self, connection: socket.socket, image: bytes, progress: _ProgressReport, alive: Callable[[], None]
    ) -> None:
        """Hand the image to the kernel block by block; stop quietly when the connection breaks."""
        loop = asyncio.get_running_loop()
        view = memoryview(image)
        progress.update(0)
        for start in range(0, len(image), SEND_BLOCK):
            block = view[start : start + SEND_BLOCK]
            try:
                await loop.sock_sendall(connection, block)
            except OSError as err:
                # the reader reports what the board said before it closed; that is the error to raise
                _LOGGER.debug("%s: sending stopped at sent=%d: %s", self._log_name, self._sent, err)
                return
            self._sent += len(block)
            alive()
            progress.update(self._sent)
        self._set_state(UploadState.WAITING_FOR_RESULT)

    async def _read_reply(self, connection: socket.socket, alive: Callable[[], None]) -> FinalReply:
        loop = asyncio.get_running_loop()
        parser = BoardReplyParser()
        while True:
            try:
                data = await loop.sock_recv(connection, RECEIVE_SIZE)
            except OSError as err:
                # a board that closes with our bytes still unread resets the connection (lwIP, Linux);
                # whatever it said before is already in the parser
                _LOGGER.debug("%s: connection reset: %s", self._log_name, err)
                data = b""
            if not data:
                return parser.close()
            alive()
            reply = parser.feed(data)
            if reply is not None:
                return reply

    def _raise_unless_ok(self, reply: FinalReply, size: int) -> None:
        if reply.kind is ReplyKind.OK:
            return
        if reply.kind is ReplyKind.ERROR:
            raise UploadVerificationError(
                f"the board refused the image: {reply.text!r} sent={self._sent} size={size}",
                host=self.host,
                board_text=reply.text,
            )
        raise UploadConnectionError(
            f"the board closed the connection without a result: sent={self._sent} size={size}",
            host=self.host,
        )

    def _set_state(self, state: UploadState) -> None:
        if state is not self._state:
            _LOGGER.debug("%s: %s -> %s", self._log_name, self._state.value, state.value)
            self._state = state


def _md5_hex(data: bytes) -> str:
    # the protocol prescribes MD5; usedforsecurity=False keeps FIPS hosts working
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _shown(answer: bytes) -> str:
    """A board's answer as printable text for messages."""
    return answer.decode("ascii", errors="replace").strip()

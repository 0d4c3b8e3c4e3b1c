"""The WiFi method (legacy firmware): the procedure document's workflow, step by step.

The master relays a CAN command that makes the slave join WiFi and start ArduinoOTA (``uc2-stack.md``
§2.3); the daemon then uploads the image over the network and waits for the board to come back on the
bus with it. Status sequence (CONTRACT.md §2)::

    command_sent → wifi_connected (ip, hostname) → downloading → uploading 0…90 → verifying → success

The download starts at once and overlaps the WiFi join (5 to 10 s on hardware); "downloading" marks the
phase that ends with a verified image in the cache. The link is borrowed only for the command and for
each verification scan, never for the upload, so that the boards of a batch can upload in parallel
while commands on the CAN link stay serialised.

Main constraint: the WiFi password goes to the master and nowhere else, the OTA password (when one is
stored) to the board's ArduinoOTA challenge and nowhere else; neither is in a log, status or error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import ClassVar, Self

from uc2otad.contract import Method
from uc2otad.errors import UploadAuthError
from uc2otad.firmware.repository import VerifiedImage
from uc2otad.links.commands import NodeInfo, ScanResult
from uc2otad.links.protocol import LinkCapability
from uc2otad.methods.arduino_ota import ARDUINO_OTA_PORT, ArduinoOtaUploader, UploadSettings
from uc2otad.methods.base import Job, LinkUse, Phase, PlannedJob, WifiCredentials
from uc2otad.methods.verify import VerifySettings, await_new_image, expected_of


@dataclass(frozen=True)
class WifiMethodSettings:
    #: how long the slave serves ArduinoOTA before it reboots (the StartOTA ``timeout`` option)
    window_ms: int = 300_000
    #: the slaves' ArduinoOTA UDP port
    ota_port: int = ARDUINO_OTA_PORT
    upload: UploadSettings = field(default_factory=UploadSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)


class WifiMethod:
    """Trigger the slave's WiFi OTA through a legacy master, then upload with ArduinoOTA."""

    name: ClassVar[str] = Method.WIFI
    needs: ClassVar[LinkCapability] = LinkCapability.WIFI_TRIGGER
    unavailable: ClassVar[str] = "this master runs CANopen firmware, which has no WiFi OTA command"
    joins_wifi: ClassVar[bool] = True
    #: the uploads go over the network, each board its own: only the CAN commands take turns
    parallel: ClassVar[bool] = True
    #: StartOTA returns with the master's reply to the trigger (the document's ``command_response``)
    acknowledged_by_master: ClassVar[bool] = True

    @classmethod
    def prepare(cls, planned: PlannedJob) -> Self:
        """:raises TypeError: the planner gave no credentials or WiFi settings (a bug)"""
        settings, credentials = planned.wifi_settings, planned.credentials
        if not isinstance(settings, WifiMethodSettings) or credentials is None:
            raise TypeError("the WiFi method needs credentials and WifiMethodSettings")
        return cls(planned.use_link, planned.obtain, credentials, settings, before=planned.before)

    def __init__(
        self,
        use_link: LinkUse,
        obtain: Callable[[], Awaitable[VerifiedImage]],
        credentials: WifiCredentials,
        settings: WifiMethodSettings | None = None,
        *,
        upload_slot: AbstractAsyncContextManager[object] | None = None,
        before: NodeInfo | None = None,
    ) -> None:
        """
        :param use_link: borrows the master link for the purpose named
        :param obtain: the board's image, resolved, cached and checked
        :param upload_slot: held around the upload (a batch's ``parallel`` limit); none by default
        :param before: the board in the scan before the update
        """
        self._before = before
        self._use_link = use_link
        self._obtain = obtain
        self._credentials = credentials
        self._settings = settings or WifiMethodSettings()
        self._upload_slot = upload_slot or contextlib.nullcontext()

    async def run(self, job: Job) -> None:
        downloading = asyncio.ensure_future(self._obtain())  # overlaps the WiFi join
        try:
            async with self._use_link(f"WiFi OTA of node {job.can_id}") as link:
                job.status.advance(Phase.COMMAND_SENT)
                joined = await link.start_wifi_ota(
                    job.can_id,
                    self._credentials.ssid,
                    self._credentials.password,
                    timeout_ms=self._settings.window_ms,
                    on_accepted=job.accepted,
                )
            job.status.advance(
                Phase.WIFI_CONNECTED, ip=joined.ip, hostname=joined.hostname, statusMsg=joined.status_msg
            )
            job.status.advance(Phase.DOWNLOADING)
            image = await downloading
            job.obtained(image)
        finally:
            await _settle(downloading)
        data = image.data  # held since the fetch: a cleared cache cannot take it (D4)
        uploader = ArduinoOtaUploader(
            joined.ip,
            port=self._settings.ota_port,
            password=self._credentials.ota_password or None,
            settings=self._settings.upload,
        )
        async with self._upload_slot:
            try:
                await uploader.upload(data, filename=image.name, progress=job.status.progress)
            except UploadAuthError as err:
                raise _auth_failed(err, stored=bool(self._credentials.ota_password)) from err
            job.committed()  # the board said "OK": MD5 checked, boot partition set, it reboots now
        job.status.advance(Phase.VERIFYING)
        expected = expected_of(image, self._before)
        evidence = await await_new_image(self._scan, job.can_id, expected, self._settings.verify)
        job.status.succeed(verification=evidence, firmware_version=image.version)

    async def _scan(self) -> ScanResult:
        async with self._use_link("verifying an update") as link:
            return await link.scan()


def _auth_failed(err: UploadAuthError, *, stored: bool) -> UploadAuthError:
    """The uploader's refusal in the daemon's words: it names the authentication and what to set, since
    the uploader (also the ``espota`` command's) knows nothing of SetOTAPassword. The password itself
    is never in either text."""
    if stored:
        reason = f"the board refused the stored OTA password ({err})"
    else:
        reason = "the board asks for an OTA password and none is stored (uc2otactl set-ota-password)"
    return UploadAuthError(
        f"ArduinoOTA authentication failed: {reason}", host=err.host, board_text=err.board_text
    )


async def _settle(download: asyncio.Future[VerifiedImage]) -> None:
    """Stop a download nobody waits for any more, and let it finish stopping (its worker thread too)."""
    if not download.done():
        download.cancel()
    await asyncio.wait({download})
    if not download.cancelled():
        download.exception()  # retrieved: after a failed trigger, its outcome is not what the user needs

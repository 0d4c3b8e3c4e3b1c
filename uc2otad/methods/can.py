"""The streaming method (CANopen firmware): the image goes through the master's serial link, and the
master forwards it to the slave by CANopen SDO (``uc2-stack.md`` §2.2).

It drives the board's status through the contract's streaming sequence: command_sent → downloading
(both as the job starts) → uploading 0…90 (from the master's ``ota_rx``, after ``/ota_start``) →
flashing → verifying → success. The image is obtained and checked before ``/ota_start``, which needs its
size and CRC, so "downloading" is the daemon's download, shown from the job's first moment.

The link calls its progress callbacks synchronously, and a status update is synchronous too: each
callback reports its step directly, in the order the master sent them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import ClassVar, Self

from uc2otad.contract import Method
from uc2otad.firmware.repository import VerifiedImage
from uc2otad.links.commands import NodeInfo
from uc2otad.links.protocol import LinkCapability, RebootWitness, UpdateLink
from uc2otad.methods.base import Job, Phase, PlannedJob
from uc2otad.methods.verify import VerifySettings, await_new_image, await_reboot, expected_of

#: borrows a link for the purpose named; any :class:`UpdateLink` that can stream will do
LinkUse = Callable[[str], AbstractAsyncContextManager[UpdateLink]]


class CanStreamMethod:
    """Stream an image through a link that streams (a CANopen master)."""

    name: ClassVar[str] = Method.CAN
    needs: ClassVar[LinkCapability] = LinkCapability.STREAM
    unavailable: ClassVar[str] = "this master runs legacy firmware: it cannot stream"
    joins_wifi: ClassVar[bool] = False
    #: the master streams to one node at a time (it holds the link for the whole stream)
    parallel: ClassVar[bool] = False
    #: the daemon downloads the image before it asks the master anything: StartOTA returns at once
    acknowledged_by_master: ClassVar[bool] = False

    @classmethod
    def prepare(cls, planned: PlannedJob) -> Self:
        return cls(planned.use_link, planned.obtain, planned.verify, before=planned.before)

    def __init__(
        self,
        use_link: LinkUse,
        obtain: Callable[[], Awaitable[VerifiedImage]],
        verify: VerifySettings | None = None,
        *,
        before: NodeInfo | None = None,
    ) -> None:
        """
        :param use_link: borrows the master link for the purpose named
        :param obtain: the board's image, resolved, cached and checked
        :param before: the board in the scan before the update (its build, its release string)
        """
        self._use_link = use_link
        self._obtain = obtain
        self._verify = verify or VerifySettings()
        self._before = before

    async def run(self, job: Job) -> None:
        # the first steps at once (issue 15, D6): the job is seen from its start, not once the image is
        # in; /ota_start follows the download, since it needs the image's size and CRC
        job.status.advance(Phase.COMMAND_SENT)
        job.status.advance(Phase.DOWNLOADING)
        image = await self._obtain()
        job.obtained(image)
        data = image.data  # held since the fetch: a cleared cache cannot take it (D4)
        async with self._use_link(f"streaming to node {job.can_id}") as link:
            started = asyncio.get_running_loop().time()
            await link.stream_ota(
                job.can_id,
                data,
                progress=lambda acknowledged, total: job.status.progress(100 * acknowledged / total),
                on_flashing=lambda: job.status.advance(Phase.FLASHING, firmware=image.name),
            )
            job.committed()  # the master said "success": the slave checked the CRC and set its boot partition
            job.status.advance(Phase.VERIFYING)
            expected = expected_of(image, self._before)
            verify, rebooted = self._verify, False
            if isinstance(link, RebootWitness):  # a link on the bus hears the reboot (direct CAN)
                verify, rebooted = await await_reboot(link, job.can_id, started, verify), True
            evidence = await await_new_image(link.scan, job.can_id, expected, verify, rebooted=rebooted)
        job.status.succeed(verification=evidence, firmware_version=image.version)

"""The USB flashes of the master in the daemon's history: one GetHistory row a FlashMaster (issue 20).

The flash job (:mod:`uc2otad.methods.usb.flash`) tells its :class:`~uc2otad.methods.usb.flash.FlashHistory`
when it begins, when it has its image and when it ends; this is that history, on the status store. The
rows are the slaves' rows: ``can_id`` 1, ``method`` "usb", and the same guarantee — the row is in the
file before anything touches the board (so a crash leaves a ``running`` row that the next start closes
as ``interrupted``), or the flash fails, cleanly, with nothing touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import StoreError
from uc2otad.firmware.cache import CachedImage
from uc2otad.firmware.catalog import MASTER_CAN_ID

_LOGGER = logging.getLogger(__name__)

#: the history row's ``method`` for a flash of the master over USB
USB_METHOD = "usb"


class UsbFlashHistory:
    """A :class:`~uc2otad.methods.usb.flash.FlashHistory` on the status store."""

    def __init__(
        self, store: StatusStore, *, timeout: float, previous_version: Callable[[], str | None]
    ) -> None:
        """
        :param timeout: seconds a row may take to reach the file before the flash fails (the jobs'
            ``history_timeout``)
        :param previous_version: the version the master runs now, if known without asking it (the
            link's identity from when it opened): read when a flash begins, before the link is released
        """
        self._store = store
        self._timeout = timeout
        self._previous_version = previous_version

    async def begin(self, job_id: str, *, firmware: str | None, rollback: str | None) -> None:
        """:raises StoreError: the row did not reach the file within the timeout (it stays queued, and
        reaches the file as failed once it can)"""
        record = JobRecord(
            job_id=job_id,
            can_id=MASTER_CAN_ID,
            method=USB_METHOD,
            firmware=firmware,
            previous_version=self._previous_version(),
            rollback=rollback,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.begin_job(record)
        except TimeoutError as err:
            reason = self._store.write_failure or "the status store is behind"
            raise StoreError(
                f"the flash did not start: its history row could not be written within {self._timeout:g} s "
                f"({reason}); nothing was written to the master"
            ) from err

    def image(self, job_id: str, image: CachedImage, version: str | None) -> None:
        self._store.note_image(job_id, firmware_version=version, sha256=image.sha256, firmware=image.name)

    def end(
        self,
        job_id: str,
        *,
        success: bool,
        error_code: str = "",
        message: str = "",
        firmware_version: str | None = None,
    ) -> None:
        self._store.finish_job(
            job_id,
            success=success,
            error_code=error_code or ("" if success else "failed"),
            message=message,
            firmware_version=firmware_version,
        )
        _LOGGER.debug("usb: history row job=%s success=%s", job_id, success, extra={"UC2_JOB_ID": job_id})

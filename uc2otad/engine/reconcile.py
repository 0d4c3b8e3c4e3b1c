"""After a crash: ask the boards whether the updates it interrupted took after all.

A daemon killed while a board verified its new image (or right after it said "success", before the
file had it) leaves a history row that says ``interrupted`` — and a board that runs the new image,
which the next StartOTA then finds "already up to date". The store marks such rows interrupted at
start, since it cannot know better (:mod:`uc2otad.engine.store`); this module then looks at the boards:
a board that reports the very release its interrupted job installed, and did not report it before
the job, runs the job's image, and the job counts as a success ("version" evidence, the strongest of
:mod:`uc2otad.methods.verify`).

The boards are scanned as the verification scans them, for up to ``window`` seconds, so that a board
still rebooting when the daemon came back is seen once it is up. What a scan cannot prove stays
``interrupted``: firmware that reports no release string (FW-main of July 2026, legacy), a board that
reports another release, a job that reinstalled the release the board already had, a board that is
not on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from uc2otad import timestamps
from uc2otad.contract import StatusDict
from uc2otad.engine.status import PHASE_MESSAGES, Phase
from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import LinkError
from uc2otad.links.commands import NodeInfo, ScanResult
from uc2otad.methods.verify import VerifySettings, is_release_string, same_release

if TYPE_CHECKING:
    from uc2otad.engine.direct import DirectConnection
    from uc2otad.engine.master import MasterConnection

_LOGGER = logging.getLogger(__name__)

#: the history row's message for a job that a restart found finished
CONFIRMED_MESSAGE = (
    "interrupted, but the board runs the new image: {version} (seen when the daemon started again)"
)


def provable(job: JobRecord) -> bool:
    """A scan can show that the job's board runs its image: the job knew the release it installs, a
    release string a board reports, and the board reported another one before.

    Not a USB flash of the master (``method`` "usb"): its status is not a board status but the USB
    flash status, which stays ``interrupted`` (a partial write can leave a board that boots the old app).
    """
    target = job.firmware_version
    return (
        job.method != "usb" and is_release_string(target) and not same_release(job.previous_version, target)
    )


async def confirm_finished(
    jobs: Iterable[JobRecord],
    scan: Callable[[], Awaitable[ScanResult]],
    confirmed: Callable[[JobRecord, NodeInfo], None],
    settings: VerifySettings,
) -> None:
    """Scan every ``settings.interval`` until each provable job's board runs its image, or the window
    ends; ``confirmed(job, node)`` for each board found running it, as soon as it is found.

    :raises LinkError: a scan failed (the jobs not confirmed yet stay interrupted)
    """
    pending = {job.job_id: job for job in jobs if provable(job)}
    deadline = time.monotonic() + settings.window
    while pending:
        result = await scan()
        for job in list(pending.values()):
            node = result.node(job.can_id)
            if node is not None and node.answered and same_release(node.fw_version, job.firmware_version):
                del pending[job.job_id]
                confirmed(job, node)
        if not pending or time.monotonic() + settings.interval > deadline:
            break
        await asyncio.sleep(settings.interval)
    for job in pending.values():
        _LOGGER.info(
            "board %d does not report %s: job %s stays interrupted",
            job.can_id, job.firmware_version, job.job_id,
            extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "interrupted"},
        )  # fmt: skip


def confirmed_status(interrupted: Mapping[str, Any], job: JobRecord) -> StatusDict:
    """The board's status once its interrupted job is confirmed: as if the job had seen it itself."""
    now = timestamps.now()
    status = {key: value for key, value in interrupted.items()
              if key not in ("error_code", "upload_error", "retry_in", "queued")}  # fmt: skip
    status.update(
        status="success",
        upload_status=Phase.SUCCESS.value,
        upload_progress=100,
        message=PHASE_MESSAGES[Phase.SUCCESS],
        verification="version",
        firmware_version=job.firmware_version,
        upload_timestamp=now,
        timestamp=now,
    )
    return cast(StatusDict, status)  # the stored dict, with the success fields of BoardStatus.succeed


async def ask_the_boards(
    interrupted: list[JobRecord],
    link: MasterConnection | DirectConnection,
    store: StatusStore,
    *,
    running: Callable[[int], bool],
    publish: Callable[[int, StatusDict], None],
    settings: VerifySettings,
) -> list[JobRecord]:
    """Ask the boards whether the interrupted updates took (issue 15, D10); the jobs that did, now
    ``success`` in the history and in their board's status — unless a newer job owns the board by then.

    Waits for the link (the direct CAN link when there is one: it hears every node, the master
    only CANopen ones it routes) as long as it takes to come back; a scan that fails leaves the jobs
    not confirmed yet interrupted, and says so in the journal.

    :param running: whether a board has a job now
    :param publish: keeps, signals and persists a board's status
    """
    confirmed: list[JobRecord] = []

    def found(job: JobRecord, node: NodeInfo) -> None:
        status = store.get_status(job.can_id)
        if running(job.can_id) or status is None or status.get("job_id") != job.job_id:
            return
        store.confirm_job(job, CONFIRMED_MESSAGE.format(version=node.fw_version))
        publish(job.can_id, confirmed_status(status, job))
        confirmed.append(job)
        _LOGGER.info(
            "engine: board %d runs %s: job %s, interrupted, is a success after all",
            job.can_id, node.fw_version, job.job_id,
            extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "success"},
        )  # fmt: skip

    async def scan() -> ScanResult:
        async with link.use("asking boards about interrupted updates") as borrowed:
            return await borrowed.scan()

    await link.wait_connected()
    try:
        await confirm_finished(interrupted, scan, found, settings)
    except LinkError as err:
        _LOGGER.warning("engine: cannot ask the boards about interrupted updates: %s", err)
    return confirmed

"""Jobs: one update of one board, run by a method, recorded before it starts, cancellable.

The rules every method shares live here, so that no method can forget one:
- one job per board at a time (a second request is :class:`JobBusyError`);
- no job starts while an inhibit is held (:class:`InhibitedError`);
- the history row is written *before* the method touches the board, and closed with the result (a
  row the status store cannot write within ``history_timeout`` fails the job before the board is
  touched, see :meth:`JobManager._recorded`); status changes never wait for the disk;
- retries: a failure whose ``error_code`` may pass (:attr:`ErrorCode.transient`) starts the attempt again,
  as the ``retry`` policy allows; the status dict restarts its sequence with ``attempt`` + 1;
- cancel stops the job at its next await; a method that has passed the point of no return (the board
  committed the image) says so with :meth:`JobContext.committed`, after which Cancel is refused;
- a job may wait for its turn (``gate``: a batch's ``parallel``, ``delay_between`` and any inhibit) with
  its history row already written and its status published as ``queued``, so that a crash while it
  waits is recorded, and shown, too; a gate that refuses the turn (a batch stopped by an earlier
  board's failure) ends the job ``failed`` with ``error_code`` "skipped", the board untouched.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from uc2otad.contract import ErrorCode, StatusDict
from uc2otad.engine.status import BoardStatus
from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import (
    AlreadyCommittedError,
    BatchStoppedError,
    InhibitedError,
    JobBusyError,
    JobError,
    NoJobError,
    StoreError,
    Uc2otadError,
    WifiJoinError,
)
from uc2otad.firmware.repository import VerifiedImage
from uc2otad.methods.base import Job
from uc2otad.retry import RetryPolicy

_LOGGER = logging.getLogger(__name__)

#: retries after the first attempt; ImSwitch retries 3x in all with 5 s gaps (uc2-stack.md §8 item 5)
RETRIES = 2
#: seconds between attempts
RETRY_DELAY = 5.0
#: the attempts of a job whose failures may pass (:attr:`ErrorCode.transient`), evenly spaced
RETRY_POLICY = RetryPolicy(attempts=1 + RETRIES, first_delay=RETRY_DELAY, factor=1.0)
#: seconds a job waits for its history row to reach the file (the status store retries a locked or full
#: database meanwhile) before it fails without touching the board: several of the store's 5 s busy
#: timeouts, so that a backup's lock is waited out, and short enough that a full disk shows as a failed
#: job within half a minute rather than as a job that waits unseen
HISTORY_TIMEOUT = 30.0


@dataclass
class JobContext:
    """What a method gets: the board's status (drive it through its sequence) and the job's options."""

    job_id: str
    can_id: int
    status: BoardStatus
    options: Mapping[str, Any]
    #: the image the method obtained, once it has
    image: VerifiedImage | None = None
    #: the history row learns the image (the release it installs: what a restart asks the board for)
    _note_image: Callable[[VerifiedImage], None] = lambda image: None
    _committed: asyncio.Event = field(default_factory=asyncio.Event)
    #: the master's reply to the starting command, or the error that ended the job before it came
    _acceptance: asyncio.Future[Mapping[str, Any] | Uc2otadError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def obtained(self, image: VerifiedImage) -> None:
        self.image = image
        self._note_image(image)

    def accepted(self, command_response: Mapping[str, Any]) -> None:
        """The master acknowledged the command that starts the update (the first attempt's counts)."""
        if not self._acceptance.done():
            self._acceptance.set_result(dict(command_response))

    async def acceptance(self) -> Mapping[str, Any]:
        """Until the master acknowledged the command: its reply.

        :raises Uc2otadError: the job ended before that, with this error (after its retries)
        """
        outcome = await asyncio.shield(self._acceptance)
        if isinstance(outcome, Uc2otadError):
            raise outcome
        return outcome

    def _ended(self, error: Uc2otadError | None) -> None:
        if not self._acceptance.done():
            self._acceptance.set_result(error if error is not None else {})

    def committed(self) -> None:
        """The board has taken the new image (ArduinoOTA "OK", streaming "success"): no cancel from now."""
        self._committed.set()

    @property
    def is_committed(self) -> bool:
        return self._committed.is_set()


#: told how a job ended (None: success) while it still holds its turn
OnEnd = Callable[[Uc2otadError | None], None]


class Method(Protocol):
    """How an image reaches a board (``uc2otad.methods``). Raises an error with ``error_code`` on failure."""

    @property
    def name(self) -> str: ...

    async def run(self, job: Job) -> None: ...


@dataclass
class _Running:
    context: JobContext
    task: asyncio.Task[None]


class JobManager:
    """Starts, tracks, cancels and records jobs."""

    def __init__(
        self,
        store: StatusStore,
        publish: Callable[[int, StatusDict], None],
        *,
        inhibited: Callable[[], bool],
        retry: RetryPolicy = RETRY_POLICY,
        history_timeout: float = HISTORY_TIMEOUT,
        on_success: Callable[[JobContext], Awaitable[None]] | None = None,
    ) -> None:
        """
        :param publish: keep, signal and persist a board's status dict (it must not wait)
        :param on_success: awaited once a job's row says success, while the job still holds the board
            (the engine keeps the image for a rollback); it must be quick and must not raise
        """
        self._store = store
        self._publish = publish
        self._inhibited = inhibited
        self.retry = retry
        self.history_timeout = history_timeout
        self._running: dict[int, _Running] = {}
        self._on_change: list[Callable[[], None]] = []
        self._on_success = on_success
        self._stopping = False

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def running(self, can_id: int) -> bool:
        return can_id in self._running

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a job starts or ends (the Busy property follows)."""
        self._on_change.append(callback)

    def start(
        self,
        can_id: int,
        method: Method,
        options: Mapping[str, Any],
        *,
        gate: AbstractAsyncContextManager[object] | None = None,
        on_end: OnEnd | None = None,
        **fields: Any,
    ) -> JobContext:
        """Start a job for board ``can_id`` and return at once; the job runs in the background.

        :param gate: entered before the first attempt and held to the end (the job's turn in a batch)
        :param on_end: told the outcome after the last attempt, before the gate is left (not on cancel)
        :param fields: added status fields known now (batch_id, firmware, previous_version…)
        :raises InhibitedError: an inhibit is held
        :raises JobBusyError: the board already has a job
        """
        if self._inhibited():
            raise InhibitedError("updates are inhibited; see the Inhibited property")
        if can_id in self._running:
            raise JobBusyError(f"board {can_id} already has a running update")
        job_id = secrets.token_hex(8)

        def publish(status: StatusDict) -> None:
            self._publish(can_id, status)

        status = BoardStatus(can_id, method.name, publish, job_id=job_id, **fields)

        def note_image(image: VerifiedImage) -> None:
            self._store.note_image(job_id, firmware_version=image.version, sha256=image.cached.sha256)

        context = JobContext(job_id, can_id, status, options, _note_image=note_image)
        task = asyncio.get_running_loop().create_task(
            self._run(context, method, gate or nullcontext(), queued=gate is not None, on_end=on_end),
            name=f"job {job_id}",
        )
        self._running[can_id] = _Running(context, task)
        self._changed()
        return context

    async def wait(self, can_id: int) -> None:
        """Until board ``can_id`` has no running job."""
        running = self._running.get(can_id)
        if running is not None:
            await asyncio.wait({running.task})

    async def cancel(self, can_id: int) -> None:
        """Stop the board's job before the board commits the image.

        :raises NoJobError: no job runs for that board
        :raises AlreadyCommittedError: the board has already taken the image
        """
        running = self._running.get(can_id)
        if running is None:
            raise NoJobError(f"board {can_id} has no running update")
        if running.context.is_committed:
            raise AlreadyCommittedError(f"board {can_id} has already committed the new image")
        running.task.cancel()
        await asyncio.wait({running.task})

    async def stop(self) -> None:
        """Cancel every job (daemon shutdown): their rows stay ``running`` and are reconciled as
        ``interrupted`` at the next start, exactly as after a crash."""
        self._stopping = True
        tasks = [running.task for running in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # ---- one job -------------------------------------------------------------------------------------

    async def _run(
        self,
        job: JobContext,
        method: Method,
        gate: AbstractAsyncContextManager[object],
        *,
        queued: bool,
        on_end: OnEnd | None = None,
    ) -> None:
        known = job.status.status
        record = JobRecord(
            job_id=job.job_id,
            can_id=job.can_id,
            method=method.name,
            batch_id=known.get("batch_id"),
            firmware=known.get("firmware"),
            previous_version=known.get("previous_version"),
            rollback=known.get("rollback"),
        )
        try:
            if queued:
                job.status.queue()  # seen at once, and reconciled as interrupted after a crash (issue 15, D6)
            if not await self._recorded(job, record):
                return
            try:
                async with gate:
                    error = await self._attempts(job, method)
                    if on_end is not None:
                        on_end(error)
                    job._ended(error)
            except BatchStoppedError as stopped:
                self._skipped(job, stopped)
        except asyncio.CancelledError:
            job._ended(JobError(f"board {job.can_id}: the update was stopped before the master answered"))
            if self._stopping:
                raise  # daemon shutdown: leave the row running, reconciled as interrupted on start-up
            job.status.fail(ErrorCode.CANCELLED)
            self._store.finish_job(
                job.job_id,
                success=False,
                error_code=ErrorCode.CANCELLED,
                message="cancelled",
                attempt=job.status.status["attempt"],
                sha256=job.image.cached.sha256 if job.image is not None else None,
            )
        finally:
            self._running.pop(job.can_id, None)
            self._changed()

    def _skipped(self, job: JobContext, stopped: BatchStoppedError) -> None:
        """The batch was stopped before this board's turn: failed, "skipped", and nothing sent to it."""
        _LOGGER.warning(
            "job %s: board %d %s", job.job_id, job.can_id, stopped,
            extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "failed"},
        )  # fmt: skip
        job.status.fail(ErrorCode.SKIPPED, detail=str(stopped))
        self._store.finish_job(
            job.job_id, success=False, error_code=ErrorCode.SKIPPED, message=str(stopped), attempt=0
        )
        job._ended(stopped)

    async def _recorded(self, job: JobContext, record: JobRecord) -> bool:
        """Write the job's history row before anything touches the board; False: the job has failed.

        This is fwupd's rule: with the row in the file first, a crash mid-transfer is found and
        reconciled at the next start. So it is the one write a job waits for. The store retries a file
        it cannot write (locked by another process, a full disk); if the row is still not in the file
        after ``history_timeout``, the job fails here, cleanly, with nothing sent to the board — rather
        than wait unseen for a disk that may never free up, or transfer an image that no row records.
        The row stays queued in the store and reaches the file, as failed, once the file can be written.
        """
        try:
            async with asyncio.timeout(self.history_timeout):
                await self._store.begin_job(record)
        except TimeoutError:
            reason = self._store.write_failure or "the status store is behind"
            error = StoreError(
                f"the update did not start: its history row could not be written within "
                f"{self.history_timeout:g} s ({reason}); nothing was sent to board {job.can_id}"
            )
            _LOGGER.error(
                "job %s: %s", job.job_id, error,
                extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "failed"},
            )  # fmt: skip
            job.status.fail(ErrorCode.FAILED, detail=str(error))
            self._store.finish_job(job.job_id, success=False, error_code=ErrorCode.FAILED, message=str(error))
            job._ended(error)
            return False
        return True

    async def _attempts(self, job: JobContext, method: Method) -> Uc2otadError | None:
        """Run the method until it succeeds or fails for good; the error that ended it, if any.

        A failure is tried again while its code is transient, the board has not committed the image
        and the retry policy has a delay left; the failed attempt's status says when (``retry_in``).
        """
        delays = self.retry.delays()
        attempt = 1
        while True:
            error = await self._attempt(job, method)
            if error is None:
                self._finish(job, attempt)
                if self._on_success is not None:
                    await self._on_success(job)
                return None
            code = error.error_code or ErrorCode.FAILED
            delay = next(delays, None) if code.transient and not job.is_committed else None
            job.status.fail(
                code,
                detail=str(error),
                wifi=code is ErrorCode.WIFI_FAILED,
                retry_in=round(delay) if delay is not None else None,
                **_board_words(error),
            )
            if delay is None:
                self._finish(job, attempt, error=error)
                return error
            _LOGGER.warning(
                "job %s: board %d attempt %d failed (%s); retrying in %.0fs",
                job.job_id, job.can_id, attempt, code, delay,
                extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "retry"},
            )  # fmt: skip
            await asyncio.sleep(delay)
            job.status.retry()
            attempt += 1

    @staticmethod
    async def _attempt(job: JobContext, method: Method) -> Uc2otadError | None:
        """One run of the method: the error that ended it, or None for success."""
        try:
            await method.run(job)
        except Uc2otadError as err:
            return err
        except Exception as err:  # a bug must end the job in the status and history too
            _LOGGER.exception(
                "job %s: board %d: internal error", job.job_id, job.can_id,
                extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "failed"},
            )  # fmt: skip
            return JobError(f"board {job.can_id}: internal error ({type(err).__name__}); see the journal")
        return None

    def _finish(self, job: JobContext, attempt: int, *, error: Uc2otadError | None = None) -> None:
        image = job.image
        self._store.finish_job(
            job.job_id,
            success=error is None,
            error_code=(error.error_code or ErrorCode.FAILED) if error is not None else "",
            message=str(error) if error is not None else "",
            attempt=attempt,
            firmware_version=image.version if image is not None and error is None else None,
            sha256=image.cached.sha256 if image is not None else None,
        )

    def _changed(self) -> None:
        for callback in list(self._on_change):
            callback()


def _board_words(err: Uc2otadError) -> dict[str, Any]:
    """The board's own words about its failure, as the status dict's ``statusMsg``."""
    return {"statusMsg": err.status_msg} if isinstance(err, WifiJoinError) and err.status_msg else {}

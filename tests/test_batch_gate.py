"""BatchGate: turns in order, paced, and held back while an inhibit is held (issue 15, D7)."""

from __future__ import annotations

import asyncio

import pytest

from uc2otad.contract import StatusDict
from uc2otad.engine.batch import BatchGate
from uc2otad.engine.status import BoardStatus, Phase, SequenceError
from uc2otad.errors import BatchStoppedError, JobError, Uc2otadError


async def test_a_turn_waits_while_an_inhibit_is_held_and_goes_on_after() -> None:
    """D7: a queued board's turn does not come while an inhibit is held; it comes once it ends."""
    held = asyncio.Event()
    released = asyncio.Event()

    async def until_uninhibited() -> None:
        await released.wait()

    gate = BatchGate(1, 0, inhibited=held.is_set, until_uninhibited=until_uninhibited)
    started: list[int] = []

    async def board(number: int, finish: asyncio.Event) -> None:
        async with gate.turn():
            started.append(number)
            await finish.wait()

    first_done, second_done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(board(1, first_done))
    second = asyncio.create_task(board(2, second_done))
    await asyncio.sleep(0.01)
    held.set()  # Inhibit while the first board runs
    first_done.set()
    await asyncio.sleep(0.05)
    assert started == [1]  # the second board's turn came under the inhibit: it waits
    held.clear()
    released.set()  # Uninhibit
    second_done.set()
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert started == [1, 2]


def test_a_queued_status_has_no_step_and_the_first_step_ends_it() -> None:
    """D6: a waiting batch board shows it is queued; its sequence then starts as usual."""
    published: list[StatusDict] = []
    status = BoardStatus(11, "wifi", published.append, job_id="j", batch_id="b")
    status.queue()
    status.advance(Phase.COMMAND_SENT)
    queued, first = published
    assert (queued["status"], queued["queued"], queued["upload_progress"]) == ("initiated", True, 0)
    assert "upload_status" not in queued and queued["batch_id"] == "b"
    assert first["upload_status"] == "command_sent" and "queued" not in first
    with pytest.raises(SequenceError):
        status.queue()


async def test_a_failed_board_refuses_the_turns_not_begun_and_lets_the_running_one_finish() -> None:
    """Issue 19: with ``stop_on_failure`` a failure ends the batch for the boards still waiting."""
    gate = BatchGate(2, 0, stop_on_failure=True)
    inside = {number: asyncio.Event() for number in (10, 11)}
    finish = {number: asyncio.Event() for number in (10, 11)}

    async def board(number: int, error: Uc2otadError | None) -> None:
        async with gate.turn():
            inside[number].set()
            await finish[number].wait()
            gate.ended(number, error)

    failing = asyncio.create_task(board(10, JobError("board 10 failed")))
    running = asyncio.create_task(board(11, None))
    await asyncio.wait_for(asyncio.gather(inside[10].wait(), inside[11].wait()), 1)
    waiting = asyncio.create_task(board(12, None))  # no slot until one of the two ends
    finish[10].set()
    with pytest.raises(BatchStoppedError, match="board 10"):
        await asyncio.wait_for(waiting, 1)
    finish[11].set()
    await asyncio.wait_for(asyncio.gather(failing, running), 1)
    assert (gate.stopped_by, gate.failed, gate.succeeded) == (10, {10}, {11})

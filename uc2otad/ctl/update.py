"""``uc2otactl update`` and ``cancel``: start updates, follow them live, cancel them on Ctrl-C.

Main constraint: no status change may be missed and none of another client's may be taken for ours.
So the command subscribes to OTAStatusChanged *before* it asks for the update (a fast board can be
half done before StartOTA's reply arrives), holds what arrives until the reply names the job ids, and
from then on follows only the signals of its own jobs.

A ``failed`` status is not always the end: the daemon retries transient failures (a new attempt
starts the sequence again), and says so with ``retry_in`` in the failed status.

``--all`` updates the boards whose CheckUpdates state is ``update_available`` and nothing else: the
scheduled update (``uc2otad-update.service``) runs it every week, and a board that merely cannot say
what it runs (``unknown``), or runs a developer's newer build, must not be reflashed each time. The
other boards are listed ``not_due`` with their state; with none due the exit status is 2.

A batch's plan is the daemon's (StartMultipleOTA's ``plan``), so that every client shows the same one:
it is printed before the progress (in ``--json`` it is the document's ``plan``), and ``--dry-run`` asks
for it alone (``dry_run``) and starts nothing. By default a batch of several boards stops at the first
that fails, the rest ending ``skipped``; ``--keep-going`` updates them all. ``--include-master`` adds
the master last, flashed over USB when its check says so; the daemon starts that flash once the boards
have ended, and this command reports it as planned (``uc2otactl flash-master`` shows such a flash).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant

from uc2otad.ctl.client import (
    DAEMON_OWNER_CHANGES,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
    EXIT_OK,
    EXIT_USAGE,
    STATUS_SIGNALS,
    CtlError,
    DaemonClient,
    unwrap,
)
from uc2otad.ctl.interrupts import interrupts
from uc2otad.ctl.output import Outcome, table
from uc2otad.ctl.password import read_password
from uc2otad.ctl.progress import ProgressView, view_for

#: the roles a batch may select (``--role``): the daemon's (uc2otad.engine.batch_plan.ROLES)
ROLES = ("motor", "laser", "led", "galvo")

#: the master CAN HAT: flashed over USB (FlashMaster), never part of ``update --all`` (CONTRACT.md §1)
MASTER_CAN_ID = 1
#: how each outcome reads in the summary
_OUTCOME_TEXT = {
    "success": "updated",
    "up_to_date": "up to date",
    "failed": "failed",
    "cancelled": "cancelled",
    "started": "started",
    "running": "not cancelled",
    "pending": "not started",
    "not_due": "not due",
    "skipped": "skipped",
    "planned": "would update",
}
#: outcomes after which nothing more happens to the board in this run
_FINAL = frozenset(
    {"success", "up_to_date", "failed", "cancelled", "started", "not_due", "skipped", "planned"}
)
#: outcomes of a board this run did not update, by design
_NOT_UPDATED = frozenset({"up_to_date", "not_due"})
#: what ``--all`` says about a board it leaves out, by its CheckUpdates state
_NOT_DUE_TEXT = {
    "device_newer": "runs newer firmware than the server's; not downgraded",
    "unknown": "the versions cannot be compared; update it by its CAN id to install the server's",
    "no_firmware": "no image for it on the firmware server",
    "unreachable": "did not answer the scan",
}


@dataclass
class BoardRun:
    """One board of an update: its job and the latest status of that job."""

    can_id: int
    job_id: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    #: pending → running → success | failed | cancelled; up_to_date (no job); started (--no-wait);
    #: not_due (--all: not in state update_available, or not downgraded); skipped (an earlier board of
    #: the batch failed); planned (--dry-run: it would be updated)
    outcome: str = "pending"
    message: str = ""

    @property
    def done(self) -> bool:
        return self.outcome in _FINAL

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"can_id": self.can_id, "result": self.outcome}
        if self.job_id:
            document["job_id"] = self.job_id
        if self.status:
            document["status"] = self.status
        if self.message or self.status.get("message"):
            document["message"] = self.message or self.status["message"]
        return document


class UpdateRun:
    """Follows the jobs of one update through OTAStatusChanged until every board has ended."""

    def __init__(self, client: DaemonClient, can_ids: Iterable[int]) -> None:
        self._client = client
        self.boards = {can_id: BoardRun(can_id) for can_id in sorted(can_ids)}
        self.batch_id: str | None = None
        #: the daemon's plan of a batch (StartMultipleOTA's ``plan``) and its word on the master
        self.plan: list[dict[str, Any]] = []
        self.master: dict[str, Any] | None = None
        self.view: ProgressView | None = None
        self.daemon_left = asyncio.Event()
        self._changed = asyncio.Event()
        #: signals that arrived before the start call's reply named our jobs
        self._early: list[tuple[int, dict[str, Any]]] | None = []

    async def subscribe(self) -> None:
        """Start hearing status signals and uc2otad leaving the bus; call before starting any job."""
        self._client.bus.add_message_handler(self._on_message)
        await self._client.add_match(STATUS_SIGNALS)
        await self._client.add_match(DAEMON_OWNER_CHANGES)

    def close(self) -> None:
        self._client.bus.remove_message_handler(self._on_message)

    def accepted(
        self,
        job_ids: Mapping[int, str],
        *,
        up_to_date: Iterable[int] = (),
        not_downgraded: Mapping[int, str] | None = None,
    ) -> None:
        """The start call's reply: the job of each board that got one, the boards left out as current
        or as running newer firmware (what it runs); then replay what came early."""
        for can_id, job_id in job_ids.items():
            board = self.boards.setdefault(can_id, BoardRun(can_id))  # a board of a --role
            board.job_id, board.outcome = job_id, "running"
        for can_id in up_to_date:
            self.boards[can_id].outcome = "up_to_date"
            self.boards[can_id].message = "already up to date"
        for can_id, running in (not_downgraded or {}).items():
            self.not_due(can_id, "device_newer", f"runs {running}, newer than the server's; not downgraded")
        early, self._early = self._early or [], None
        for can_id, status in early:
            self._on_status(can_id, status)

    def not_due(self, can_id: int, state: str, message: str) -> None:
        """Board ``can_id`` is left out of this run: up to date, or in another state than
        ``update_available`` (``--all``)."""
        board = self.boards.setdefault(can_id, BoardRun(can_id))
        self.boards = dict(sorted(self.boards.items()))  # the summary lists the boards by CAN id
        board.outcome = "up_to_date" if state == "up_to_date" else "not_due"
        board.message = "already up to date" if state == "up_to_date" else f"{state}: {message}"

    @property
    def jobs(self) -> list[BoardRun]:
        return [board for board in self.boards.values() if board.job_id]

    # ---- signals ------------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        if message.member == "OTAStatusChanged":
            can_id, status = int(message.body[0]), unwrap(message.body[1])
            if self._early is not None:
                self._early.append((can_id, status))
            else:
                self._on_status(can_id, status)
        elif message.member == "NameOwnerChanged" and message.body[2] == "":
            self.daemon_left.set()
            self._changed.set()

    def _on_status(self, can_id: int, status: dict[str, Any]) -> None:
        board = self.boards.get(can_id)
        if board is None or board.job_id is None or status.get("job_id") != board.job_id or board.done:
            return  # another client's job, or an earlier one of this board
        board.status = status
        phase = status.get("upload_status")
        if phase == "success":
            board.outcome = "success"
        elif phase == "failed" and "retry_in" not in status:  # with retry_in, another attempt follows
            code = status.get("error_code")
            board.outcome = code if code in ("cancelled", "skipped") else "failed"
        else:
            board.outcome = "running"
        if self.view is not None:
            self.view.show(can_id, status)
        self._changed.set()

    # ---- waiting --------------------------------------------------------------------------------------

    async def follow(self, interrupted: asyncio.Event) -> None:
        """Until every board has ended, Ctrl-C, or uc2otad has left the bus."""
        while not all(board.done for board in self.jobs):
            if interrupted.is_set() or self.daemon_left.is_set():
                return
            self._changed.clear()
            waits = [asyncio.ensure_future(event.wait()) for event in (self._changed, interrupted)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def cancel_running(self) -> None:
        """Ctrl-C: Cancel each board that has not ended; the daemon refuses those past commit."""
        for board in self.jobs:
            if board.done:
                continue
            try:
                await self._client.call("Cancel", "u", board.can_id)
            except CtlError as err:
                board.message = f"not cancelled: {err.message}"
                self._note(f"CAN {board.can_id}: not cancelled: {err.message}")
                continue
            board.outcome = "cancelled"
            board.message = "cancelled; the board keeps the firmware it had"
            self._note(f"CAN {board.can_id}: cancelled; the board keeps the firmware it had")

    def _note(self, text: str) -> None:
        if self.view is not None:
            self.view.note(text)


# ---- the commands ------------------------------------------------------------------------------------


async def update(client: DaemonClient, args: argparse.Namespace) -> Outcome:
    """Start the update of the named boards (or all), follow it, and say how each ended."""
    with interrupts() as interrupted:  # before anything is printed: Ctrl-C from then on cancels cleanly
        if args.all and args.can_ids:
            raise CtlError("usage", "name the boards to update (CAN ids) or give --all, not both", EXIT_USAGE)
        if not (args.all or args.can_ids or args.role or args.include_master):
            raise CtlError("usage", "name the boards to update: CAN ids, --role, or --all", EXIT_USAGE)
        if args.password_file is not None and args.ssid is None:
            raise CtlError("usage", "--password-file goes with --ssid", EXIT_USAGE)
        options = _start_options(args)
        roles: dict[int, str] = {}
        can_ids = list(dict.fromkeys(args.can_ids))
        slaves: list[dict[str, Any]] = []
        if args.all:
            (checked,) = await client.call("CheckUpdates")
            roles = {entry["can_id"]: entry.get("role", "") for entry in checked}
            slaves = [
                entry
                for entry in checked
                if entry["can_id"] != MASTER_CAN_ID and (not args.role or entry.get("role") in args.role)
            ]
            can_ids = [entry["can_id"] for entry in slaves if entry["state"] == "update_available"]
        run = UpdateRun(client, can_ids)
        for entry in slaves:
            if entry["state"] != "update_available":
                run.not_due(entry["can_id"], entry["state"], _NOT_DUE_TEXT.get(entry["state"], ""))
        if args.all and not can_ids and not args.include_master:
            note = (
                "nothing to update: no board has an update available"
                if slaves
                else "the scan found no slaves"
            )
            return _finish(args, run, note)
        try:
            await run.subscribe()
            await _start(client, run, args, options)
            if not args.no_wait and not args.dry_run and run.jobs:
                if not args.json:
                    run.view = view_for(sys.stdout, [board.can_id for board in run.jobs], roles)
                    for board in run.jobs:  # what arrived before the view existed
                        if board.status:
                            run.view.show(board.can_id, board.status)
                await run.follow(interrupted)
                if interrupted.is_set():
                    if run.view is not None:
                        run.view.note("interrupted: cancelling what can be cancelled…")
                    await run.cancel_running()
                if run.view is not None:
                    run.view.close()
        finally:
            run.close()
        if run.daemon_left.is_set():
            for board in run.jobs:
                if not board.done:
                    board.message = "uc2otad left the bus during the update"
        return _finish(args, run, interrupted=interrupted.is_set())


async def cancel(client: DaemonClient, args: argparse.Namespace) -> Any:
    """Stop the board's update before it commits the new image; the board keeps its old one."""
    await client.call("Cancel", "u", args.can_id)
    (status,) = await client.call("GetStatus", "u", args.can_id)
    if not args.json:
        print(f"CAN {args.can_id}: update cancelled; the board keeps the firmware it had")
    return {"can_id": args.can_id, "cancelled": True, "status": status}


def add_arguments(update_parser: argparse.ArgumentParser, cancel_parser: argparse.ArgumentParser) -> None:
    """The options of ``update`` and ``cancel``."""
    p = update_parser
    p.add_argument("can_ids", nargs="*", type=int, metavar="CAN_ID", help="the boards to update")
    p.add_argument(
        "--all", action="store_true", help="every board but the master whose check says: update available"
    )
    p.add_argument("--method", choices=("auto", "wifi", "can"), help="how the image reaches the board")
    p.add_argument(
        "--link", choices=("auto", "master", "can"), help="through the master or the direct CAN link"
    )
    p.add_argument(
        "--skip-check",
        action="append",
        choices=("bus", "errors", "node"),
        metavar="CHECK",
        help="skip a check before the update (bus, errors, node); repeatable",
    )
    p.add_argument("--ssid", metavar="S", help="WiFi for the WiFi method (default: the stored credentials)")
    p.add_argument("--password-file", type=Path, metavar="F", help="the WiFi password, read from this file")
    p.add_argument(
        "--parallel", type=int, metavar="N", help="WiFi uploads at a time in a batch (1-8, default 1)"
    )
    p.add_argument(
        "--delay", type=int, metavar="S", help="seconds between boards of a batch (0-600, default 2)"
    )
    p.add_argument("--timeout", type=int, metavar="MS", help="the board's WiFi OTA window in ms")
    p.add_argument("--force", action="store_true", help="update even a board that runs that version")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="install even on a board that runs a newer build"
    )
    p.add_argument("--no-wait", action="store_true", help="return once the update has started")
    p.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        metavar="ROLE",
        help="the boards of this role (motor, laser, led, galvo) as well; repeatable",
    )
    p.add_argument(
        "--include-master", action="store_true", help="flash the master last, over USB, when it is due"
    )
    p.add_argument("--master-port", metavar="PORT", help="the master's USB port (default: the HAT link's)")
    p.add_argument(
        "--keep-going", action="store_true", help="update every board even after one failed (default: stop)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    cancel_parser.add_argument("can_id", type=int, metavar="CAN_ID")


# ---- helpers -----------------------------------------------------------------------------------------


def _start_options(args: argparse.Namespace) -> dict[str, Variant]:
    """StartOTA's options (CONTRACT.md §1) from the command line; the password never from argv."""
    options: dict[str, Variant] = {}
    if args.method is not None:
        options["method"] = Variant("s", args.method)
    if args.link is not None:
        options["link"] = Variant("s", args.link)
    if args.skip_check:
        options["skip_checks"] = Variant("as", sorted(set(args.skip_check)))
    if args.ssid is not None:
        options["ssid"] = Variant("s", args.ssid)
        options["password"] = Variant("s", read_password(args.password_file))
    if args.timeout is not None:
        options["timeout"] = Variant("u", _uint(args.timeout, "--timeout"))
    if args.force:
        options["force"] = Variant("b", True)
    if args.allow_downgrade:
        options["allow_downgrade"] = Variant("b", True)
    return options


async def _start(
    client: DaemonClient, run: UpdateRun, args: argparse.Namespace, options: dict[str, Variant]
) -> None:
    """One board: StartOTA; several or --all: one batch with StartMultipleOTA (the boards not yet
    decided: ``--all`` has left out those not due)."""
    can_ids = [board.can_id for board in run.boards.values() if board.outcome == "pending"]
    if len(can_ids) == 1 and not (args.all or _batch_only(args)):
        (reply,) = await client.call("StartOTA", "ua{sv}", can_ids[0], options)
        job_id = reply.get("job_id")
        run.accepted({can_ids[0]: job_id} if job_id else {}, up_to_date=() if job_id else can_ids)
    else:
        batch = dict(options)
        if args.parallel is not None:
            batch["parallel"] = Variant("u", _uint(args.parallel, "--parallel"))
        if args.delay is not None:
            batch["delay_between"] = Variant("u", _uint(args.delay, "--delay"))
        batch.update(_plan_options(args))
        (reply,) = await client.call("StartMultipleOTA", "aua{sv}", can_ids, batch)
        run.batch_id = reply.get("batch_id")
        run.plan, run.master = reply.get("plan", []), reply.get("master")
        job_ids = {int(can_id): job_id for can_id, job_id in reply.get("job_ids", {}).items()}
        newer = {int(can_id): running for can_id, running in reply.get("not_downgraded", {}).items()}
        left_out = [can_id for can_id in can_ids if can_id not in job_ids and can_id not in newer]
        run.accepted(job_ids, up_to_date=left_out, not_downgraded=newer)
    if args.dry_run:
        for entry in run.plan:
            if entry["action"] == "update":
                run.boards.setdefault(entry["can_id"], BoardRun(entry["can_id"])).outcome = "planned"
    if args.no_wait:
        for board in run.jobs:
            board.outcome = "started"
    if args.json:
        return
    if run.plan:
        _print_plan(run.plan, dry_run=args.dry_run)
    for board in run.boards.values():
        if board.outcome == "up_to_date":
            print(f"CAN {board.can_id}: already up to date")
        elif board.outcome == "not_due":
            print(f"CAN {board.can_id}: not updated: {board.message}")
    if run.batch_id and run.jobs:
        ids = ", ".join(str(board.can_id) for board in run.jobs)
        print(f"updating CAN {ids} (batch {run.batch_id})", flush=True)
    elif run.jobs:
        print(f"updating CAN {run.jobs[0].can_id} (job {run.jobs[0].job_id})", flush=True)
    if args.no_wait and run.jobs:
        print("follow it with: uc2otactl watch (or uc2otactl status)")
    if _master_started(args, run) and run.master is not None:
        print(f"then the master over USB on {run.master.get('port')}, once the boards have ended", flush=True)


def _finish(
    args: argparse.Namespace, run: UpdateRun, note: str = "", *, interrupted: bool = False
) -> Outcome:
    """The summary, the --json document and the exit code (CONTRACT.md §5)."""
    boards = list(run.boards.values())
    outcomes = [board.outcome for board in boards]
    if args.dry_run:
        due = any(entry["action"] != "skip" for entry in run.plan)
        result, exit_code = "dry_run", EXIT_OK if due else EXIT_NOTHING_TO_DO
    elif interrupted or any(outcome not in ("success", "started", *_NOT_UPDATED) for outcome in outcomes):
        result, exit_code = ("cancelled" if interrupted else "failed"), EXIT_FAILED
    elif _master_started(args, run) and all(outcome in _NOT_UPDATED for outcome in outcomes):
        result, exit_code = "started", EXIT_OK  # only the master's flash, which the daemon runs on
    elif all(outcome == "up_to_date" for outcome in outcomes):
        result, exit_code = "up_to_date", EXIT_NOTHING_TO_DO
    elif all(outcome in _NOT_UPDATED for outcome in outcomes):
        result, exit_code = "nothing_to_do", EXIT_NOTHING_TO_DO
    else:
        result, exit_code = ("started" if "started" in outcomes else "success"), EXIT_OK
    document: dict[str, Any] = {
        "result": result,
        "exit_code": exit_code,
        "boards": {str(board.can_id): board.as_dict() for board in boards},
    }
    if run.batch_id:
        document["batch_id"] = run.batch_id
    if run.plan:
        document["plan"] = run.plan
    if run.master is not None:
        document["master"] = run.master
    if not args.json:
        _summary(boards, note)
    return Outcome(document, exit_code)


def _master_started(args: argparse.Namespace, run: UpdateRun) -> bool:
    """The daemon flashes the master after this batch (``--include-master``, and it was due)."""
    return not args.dry_run and run.master is not None and bool(run.master.get("included"))


def _batch_only(args: argparse.Namespace) -> bool:
    """Options that only a batch (StartMultipleOTA) has: one board with them is a batch of one."""
    return bool(args.role or args.include_master or args.dry_run or args.keep_going)


def _plan_options(args: argparse.Namespace) -> dict[str, Variant]:
    """StartMultipleOTA's plan options (issue 19) from the command line."""
    options: dict[str, Variant] = {}
    if args.role and not args.all:  # with --all the roles have chosen among the boards due already
        options["roles"] = Variant("as", sorted(set(args.role)))
    if args.include_master:
        options["include_master"] = Variant("b", True)
    if args.master_port is not None:
        options["master_port"] = Variant("s", args.master_port)
    if args.keep_going:
        options["stop_on_failure"] = Variant("b", False)
    if args.dry_run:
        options["dry_run"] = Variant("b", True)
    return options


def _print_plan(plan: list[dict[str, Any]], *, dry_run: bool) -> None:
    """The daemon's plan, in its order, before anything happens (and all that happens with --dry-run)."""
    print("dry run: nothing is changed" if dry_run else "plan:")
    rows = [
        (entry["can_id"], entry.get("role"), entry.get("link"), entry.get("state"), entry["action"],
         entry.get("reason") or entry.get("port"))
        for entry in plan
    ]  # fmt: skip
    table(("CAN", "ROLE", "LINK", "STATE", "ACTION", "NOTE"), rows)
    print(flush=True)


def _summary(boards: list[BoardRun], note: str) -> None:
    if note:
        print(note)
    if not boards:
        return
    rows = [
        (board.can_id, _OUTCOME_TEXT[board.outcome], _versions(board), board.status.get("error_code"),
         board.message or board.status.get("message"))
        for board in boards
    ]  # fmt: skip
    print()
    table(("CAN", "RESULT", "FIRMWARE", "ERROR", "MESSAGE"), rows)
    counts: dict[str, int] = {}
    for board in boards:
        counts[_OUTCOME_TEXT[board.outcome]] = counts.get(_OUTCOME_TEXT[board.outcome], 0) + 1
    print(", ".join(f"{count} {text}" for text, count in counts.items()), flush=True)


def _versions(board: BoardRun) -> str | None:
    before, after = board.status.get("previous_version"), board.status.get("firmware_version")
    if board.outcome == "success" and after:
        return f"{before} -> {after}" if before else str(after)
    return before


def _uint(value: int, flag: str) -> int:
    if value < 0:
        raise CtlError("usage", f"{flag} must not be negative", EXIT_USAGE)
    return value

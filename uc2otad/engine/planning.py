"""Planning an update: everything a job needs, resolved and checked before any board is touched.

StartOTA and StartMultipleOTA answer an error for whatever would fail later — the master's id, no image,
a method the master cannot carry, missing WiFi credentials, a board that is busy — and only then does any
board get a command, as fwupd checks a device's requirements before it writes. Each board gets a
:class:`Route`: the link it goes through (the direct CAN link for a board that answers CANopen on it,
else the master; :class:`Planner`) and the method, chosen by its traits (:mod:`uc2otad.methods`):
"auto" is the first registered method whose link capability that link offers; a method asked for by
name must be one it offers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uc2otad import secrets
from uc2otad.contract import Link, Method, UpdateState
from uc2otad.engine.checking import Installed, board_state, due
from uc2otad.engine.health import HealthSettings, check_link, check_node, skipped_checks
from uc2otad.errors import ConfigError, InvalidArgumentError, LinkClosedError, LinkError
from uc2otad.firmware.catalog import MASTER_CAN_ID, MAX_CAN_ID, ResolvedImage
from uc2otad.firmware.repository import FirmwareRepository, VerifiedImage
from uc2otad.links.ota_wifi import DEFAULT_WINDOW_MS
from uc2otad.links.protocol import LinkCapability
from uc2otad.methods import METHODS, method_class
from uc2otad.methods.base import Job, LinkUse, PlannedJob, SlaveMethod, WifiCredentials
from uc2otad.methods.verify import VerifySettings

if TYPE_CHECKING:
    from uc2otad.engine.direct import DirectConnection
    from uc2otad.engine.master import MasterConnection
    from uc2otad.links.commands import NodeInfo

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """How one board of a plan is reached: through which link, by which method, as that link saw it."""

    link: Link
    method: type[SlaveMethod]
    use_link: LinkUse
    #: the board in that link's scan before the update; None: not in it
    before: NodeInfo | None


@dataclass(frozen=True)
class Plan:
    """An update of some boards, resolved before any of them is touched."""

    routes: Mapping[int, Route]
    images: Mapping[int, ResolvedImage]
    credentials: WifiCredentials | None
    #: the boards to update (not current, or forced), in the order given
    due: list[int]
    #: the WiFi window asked of the slaves, ms
    window_ms: int
    #: the boards left out because they run a newer build than the image (no ``allow_downgrade``):
    #: what each runs
    not_downgraded: Mapping[int, str] = field(default_factory=dict)
    #: each board's state against its image (:func:`.checking.board_state`): what the batch's plan shows
    states: Mapping[int, UpdateState] = field(default_factory=dict)
    #: the checks before an update the call skips (``skip_checks``, :mod:`.health`)
    skip_checks: frozenset[str] = frozenset()
    #: the boards whose image is given, not the server's: a rollback's kept image (:mod:`.rollback`)
    pinned: Mapping[int, VerifiedImage] = field(default_factory=dict)

    @property
    def parallel(self) -> bool:
        """Every board's method lets a batch run it beside others."""
        return all(route.method.parallel for route in self.routes.values())


class Planner:
    """Makes :class:`Plan` s against the engine's links, firmware server and checks.

    Which link a board takes (issue 18): the direct CAN link for a board that answers CANopen on it
    (an SDO read of 0x1000 in its scan), the master for the rest — legacy slaves speak no CANopen OTA,
    and only the master relays the WiFi trigger. StartOTA's ``link`` option ("master", "can") insists
    on one; ``method`` "wifi" always goes through the master.
    """

    def __init__(
        self,
        master: MasterConnection | None,
        repository: Callable[[], FirmwareRepository],
        check_can_start: Callable[[list[int]], None],
        credentials: Callable[[Mapping[str, Any]], Awaitable[WifiCredentials]],
        *,
        verify: VerifySettings,
        wifi_settings: Callable[[int], object],
        direct: DirectConnection | None = None,
        installed: Installed | None = None,
        health: HealthSettings | None = None,
    ) -> None:
        """
        :param repository: the firmware repository now (SetFirmwareServer replaces it)
        :param installed: the sha256 of the image last installed on a board (from the history): what
            tells whether a board without a release string is current (:mod:`.checking`)
        :param check_can_start: raises when the boards may not start now (inhibit, busy, USB flash)
        :param credentials: the WiFi credentials for a call's options
        :param wifi_settings: the WiFi method's settings for a window (loads its code: on first use)
        :param direct: the direct CAN link, when one is configured
        :param health: the limits of the checks before an update (:mod:`.health`)
        """
        self._master = master
        self._direct = direct
        self._repository = repository
        self._check_can_start = check_can_start
        self._credentials = credentials
        self._verify = verify
        self._wifi_settings = wifi_settings
        self._installed = installed or _nothing_installed
        self._health = health or HealthSettings()

    async def plan(
        self,
        can_ids: list[int],
        options: Mapping[str, Any],
        *,
        pinned: Mapping[int, VerifiedImage] | None = None,
    ) -> Plan:
        """What updating ``can_ids`` takes, checked before any board is touched.

        :param pinned: the image of some boards, given (a rollback): no server is asked for them

        Which boards are due is :func:`.checking.due` of each board's state: one that runs the offered
        release is left out unless ``force``; one that runs a newer build (a developer's) unless
        ``allow_downgrade`` — then it is in :attr:`Plan.not_downgraded`, for the caller to say so.

        :raises InvalidArgumentError: the master's id, a method or link the boards cannot use, no
            credentials
        :raises InhibitedError, JobBusyError: see ``check_can_start``
        :raises FirmwareNotFoundError: no image for a board
        :raises LinkError: no link to a board, or it did not answer
        """
        for can_id in can_ids:
            check_can_id(can_id)
            if can_id == MASTER_CAN_ID:
                raise InvalidArgumentError(
                    "CAN id 1 is the master CAN HAT: it is flashed over USB (FlashMaster)"
                )
        if self._master is None and self._direct is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        self._check_can_start(can_ids)
        pinned = pinned or {}
        images = {can_id: image.resolved for can_id, image in pinned.items() if can_id in can_ids}
        if len(images) < len(can_ids):
            catalog = await self._repository().catalog()
            for can_id in can_ids:
                images.setdefault(can_id, catalog.resolve(can_id, name=options.get("firmware")))
        asked_method, asked_link = options.get("method", "auto"), options.get("link", "auto")
        routes = await self._direct_routes(can_ids, asked_method, asked_link)
        rest = [can_id for can_id in can_ids if can_id not in routes]
        if rest:
            routes.update(await self._master_routes(rest, asked_method))
        skip = skipped_checks(options.get("skip_checks", ()))
        await self._check_health(routes, skip)
        credentials = (
            await self._credentials(options) if any(r.method.joins_wifi for r in routes.values()) else None
        )
        states = {
            can_id: await board_state(routes[can_id].before, images[can_id], self._installed)
            for can_id in can_ids
        }
        self._check_can_start(can_ids)  # again: the scans took a while
        force, allow_downgrade = bool(options.get("force")), bool(options.get("allow_downgrade"))
        ordered = {can_id: routes[can_id] for can_id in can_ids}
        return Plan(
            ordered,
            images,
            credentials,
            [
                can_id
                for can_id in can_ids
                if due(states[can_id], force=force, allow_downgrade=allow_downgrade)
            ],
            int(options.get("timeout", DEFAULT_WINDOW_MS)),
            not_downgraded={
                can_id: _running(routes[can_id].before)
                for can_id in can_ids
                if states[can_id] is UpdateState.DEVICE_NEWER and not allow_downgrade
            },
            states=states,
            skip_checks=skip,
            pinned=pinned,
        )

    async def _check_health(self, routes: Mapping[int, Route], skip: frozenset[str]) -> None:
        """The checks of :mod:`.health`: each link the boards take, then each board.

        :raises UnhealthyError: a check failed
        """
        for use_link in {route.use_link for route in routes.values()}:
            async with use_link("checking the bus before an update") as link:
                await check_link(link, self._health, skip)
        for can_id, route in routes.items():
            check_node(can_id, route.before, skip)

    async def _direct_routes(
        self, can_ids: list[int], asked_method: str, asked_link: str
    ) -> dict[int, Route]:
        """The boards that go over the direct CAN link: those answering CANopen on it.

        :raises InvalidArgumentError: ``link`` "can" for a board that does not answer there, or without
            a direct link, or with method "wifi"
        :raises LinkError: ``link`` "can" and the direct link is not open or did not answer
        """
        direct = self._direct
        if asked_link == Link.CAN:
            if direct is None:
                raise InvalidArgumentError("link 'can': no direct CAN link is configured ([can] interface)")
            if asked_method == Method.WIFI:
                raise InvalidArgumentError("link 'can' cannot carry the WiFi method: only a master relays it")
        if direct is None or asked_link == Link.MASTER or asked_method == Method.WIFI:
            return {}
        try:
            async with direct.use("checking boards before an update") as link:
                method = choose_method(asked_method, link.capabilities)
                scan = await link.scan()
        except LinkError as err:
            if asked_link == Link.CAN:
                raise
            _LOGGER.warning("planning: the direct CAN link cannot be asked (%s); trying the master", err)
            return {}
        routes: dict[int, Route] = {}
        for can_id in can_ids:
            node = scan.node(can_id)
            if node is not None and node.canopen:
                routes[can_id] = Route(Link.CAN, method, direct.use, node)
        missing = [can_id for can_id in can_ids if can_id not in routes]
        if asked_link == Link.CAN and missing:
            raise InvalidArgumentError(
                f"link 'can': board {missing[0]} does not answer CANopen on {direct.name}"
            )
        return routes

    async def _master_routes(self, can_ids: list[int], asked_method: str) -> dict[int, Route]:
        """The boards that go through the master.

        :raises LinkClosedError: no master configured, or it is not connected
        :raises InvalidArgumentError: a method the master cannot carry out
        """
        master = self._master
        if master is None:
            via = " and it does not answer CANopen on the direct CAN link" if self._direct else ""
            raise LinkClosedError(
                f"board {can_ids[0]}: no serial port configured for the master CAN HAT (serial.port){via}",
                port="",
            )
        async with master.use("checking boards before an update") as link:
            method = choose_method(asked_method, link.capabilities)
            scan = await link.scan()
        return {can_id: Route(Link.MASTER, method, master.use, scan.node(can_id)) for can_id in can_ids}

    def job(self, plan: Plan, can_id: int, *, recheck: bool = False) -> SlaveMethod | Rechecked:
        """The method instance for board ``can_id`` of ``plan``.

        :param recheck: run the checks before an update again when the job starts (a batch's board
            whose turn comes after others': the bus or the node may have changed meanwhile)
        """
        route = plan.routes[can_id]
        repository, name = self._repository(), plan.images[can_id].name
        pinned = plan.pinned.get(can_id)

        async def obtain() -> VerifiedImage:
            return pinned if pinned is not None else await repository.obtain(can_id, name=name)

        planned = PlannedJob(
            can_id=can_id,
            use_link=route.use_link,
            obtain=obtain,
            verify=self._verify,
            before=route.before,
            credentials=plan.credentials,
            wifi_settings=self._wifi_settings(plan.window_ms) if route.method.joins_wifi else None,
        )
        method = route.method.prepare(planned)
        if not recheck:
            return method
        return Rechecked(method, lambda: self.check_board(can_id, route, plan.skip_checks))

    async def check_board(self, can_id: int, route: Route, skip: frozenset[str]) -> None:
        """The checks of :mod:`.health` for one board, on a fresh scan of its link: at a batch board's
        turn, and after an update with ``update.rollback_on_unhealthy``.

        :raises UnhealthyError: a check failed (the job ends ``unhealthy``, nothing sent to the board)
        """
        if {"bus", "errors", "node"} <= skip:
            return
        async with route.use_link("checking the bus before an update") as link:
            await check_link(link, self._health, skip)
            if "node" not in skip:
                check_node(can_id, (await link.scan()).node(can_id), skip)


class Rechecked:
    """A batch board's method, run only once the checks before an update pass again at its turn."""

    def __init__(self, method: SlaveMethod, check: Callable[[], Awaitable[None]]) -> None:
        self._method = method
        self._check = check

    @property
    def name(self) -> str:
        return self._method.name

    async def run(self, job: Job) -> None:
        await self._check()
        await self._method.run(job)


async def wifi_credentials(
    options: Mapping[str, Any], stored_ssid: str, stored_password: Callable[[], Awaitable[str]]
) -> WifiCredentials:
    """The call's WiFi credentials, else the stored ones (SetWiFiCredentials): the stored password
    belongs to the stored SSID only.

    :raises InvalidArgumentError: none anywhere, or ones the firmware cannot carry
    """
    ssid = options.get("ssid") or stored_ssid
    if not ssid:
        raise InvalidArgumentError(
            "no WiFi credentials: pass ssid and password, or store them with SetWiFiCredentials"
        )
    if "password" in options:
        password = options["password"]
    else:
        password = await stored_password() if ssid == stored_ssid else ""
    try:
        secrets.check_ssid(ssid, key="ssid")
        secrets.check_password(password)
    except ConfigError as err:
        raise InvalidArgumentError(str(err)) from err
    return WifiCredentials(ssid, password)


def choose_method(asked: str, capabilities: frozenset[LinkCapability]) -> type[SlaveMethod]:
    """The method for ``asked`` with a master that offers ``capabilities``. A method's module loads
    only when it is asked about, in registry order (idle memory: a CANopen master never loads WiFi's).

    :raises UnknownMethodError: no method of that name
    :raises InvalidArgumentError: a method this master cannot carry out
    """
    if asked != "auto":
        method = method_class(asked)
        if method.needs in capabilities:
            return method
    fitting = next((name for name in METHODS if method_class(name).needs in capabilities), None)
    if asked == "auto" and fitting is not None:
        return method_class(fitting)
    if asked == "auto":
        raise InvalidArgumentError("the master offers no way to update a board (it did not identify itself)")
    instead = f"; use {fitting!r}" if fitting else ""
    raise InvalidArgumentError(f"{method_class(asked).unavailable} (method {asked!r}){instead}")


async def _nothing_installed(can_id: int) -> str | None:
    """No history: a board without a release string is never known to be current."""
    return None


def _running(node: NodeInfo | None) -> str:
    return (node.fw_version if node is not None else None) or "?"


def check_can_id(can_id: int, *, allow_all: bool = False) -> int:
    """:raises InvalidArgumentError: outside 1..127 (0 too, unless ``allow_all``: 0 = every board)"""
    low = 0 if allow_all else 1
    if not low <= can_id <= MAX_CAN_ID:
        raise InvalidArgumentError(f"CAN id must be {low}..{MAX_CAN_ID}, not {can_id}")
    return can_id

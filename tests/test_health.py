"""The checks before an update (``engine/health.py``), one by one against a link's reported health."""

from __future__ import annotations

import pytest

from uc2otad.engine.health import HealthSettings, check_link, check_node, skipped_checks
from uc2otad.errors import InvalidArgumentError, UnhealthyError
from uc2otad.links.commands import BusHealth, NodeInfo
from uc2otad.links.protocol import LinkCapability

NONE: frozenset[str] = frozenset()


class Link:
    """A link reporting ``health``; a CANopen one unless ``legacy``."""

    name = "test-link"

    def __init__(self, health: BusHealth, *, legacy: bool = False) -> None:
        self.health = health
        self.capabilities = frozenset() if legacy else frozenset({LinkCapability.STREAM})
        self.asked = 0

    async def bus_health(self) -> BusHealth:
        self.asked += 1
        return self.health


def health(state: str = "running", nmt: str | None = "OPERATIONAL", tx: int = 0, rx: int = 0) -> BusHealth:
    return BusHealth(node_id=1, can_role=1, nmt_state=5, nmt_state_name=nmt, bus_state=state,
                     tx_errors=tx, rx_errors=rx, tx_failed=0, bus_off_count=0)  # fmt: skip


@pytest.mark.parametrize(
    ("reported", "check", "words"),
    [
        (health("bus_off"), "bus", "bus-off"),
        (health("stopped"), "bus", "stopped"),
        (health("error_passive"), "bus", "error-passive"),  # the direct link's word
        (health(nmt="PRE-OPERATIONAL"), "bus", "PRE-OPERATIONAL"),
        (health(tx=96), "errors", "tx=96"),
        (health(rx=200), "errors", "rx=200"),
    ],
)
async def test_an_unhealthy_bus_is_refused_naming_the_check(
    reported: BusHealth, check: str, words: str
) -> None:
    with pytest.raises(UnhealthyError, match=words) as caught:
        await check_link(Link(reported), HealthSettings(), NONE)  # type: ignore[arg-type]
    assert caught.value.check == check and caught.value.error_code == "unhealthy"
    await check_link(Link(reported), HealthSettings(), frozenset({check}))  # type: ignore[arg-type]


async def test_a_healthy_bus_passes_and_a_legacy_master_is_not_asked() -> None:
    await check_link(Link(health("error_warning", nmt=None, tx=95)), HealthSettings(), NONE)  # type: ignore[arg-type]
    legacy = Link(health("bus_off"), legacy=True)
    await check_link(legacy, HealthSettings(), NONE)  # type: ignore[arg-type]
    assert legacy.asked == 0  # a legacy master has no /can_get
    with pytest.raises(UnhealthyError):
        await check_link(Link(health(tx=10)), HealthSettings(max_bus_errors=10), NONE)  # type: ignore[arg-type]


def test_a_node_not_heard_lately_is_refused() -> None:
    gone = NodeInfo(can_id=12, device_type=1, role="motor", reachable=False, status="unreachable")
    for node in (gone, None):
        with pytest.raises(UnhealthyError, match="board 12 was not heard") as caught:
            check_node(12, node, NONE)
        assert caught.value.check == "node"
    check_node(12, gone, frozenset({"node"}))


def test_skip_checks_names_only_known_checks() -> None:
    assert skipped_checks(["bus", "node"]) == {"bus", "node"}
    with pytest.raises(InvalidArgumentError, match="no check 'inhibit'"):
        skipped_checks(["inhibit"])

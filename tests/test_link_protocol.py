"""The link protocol (``uc2otad.links.protocol``): the HAT link offers it, and ``links`` has no circle.

The capabilities come from the master's own ``/state_get``, answered by the virtual microscope; that
``SerialHatLink`` satisfies the protocols is checked by mypy, through the annotated assignments below.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_link_ota_stream import linked, microscope
from test_link_ota_wifi import legacy_microscope

import uc2otad.links
from uc2otad.links.hat_channel import HatChannel
from uc2otad.links.protocol import LinkCapability, MasterLink, UpdateLink, WifiTriggerLink
from uc2otad.links.serial_hat import SerialHatLink


def test_the_hat_link_satisfies_the_protocols() -> None:
    link = SerialHatLink("loop://")
    master: MasterLink = link
    update: UpdateLink = master
    wifi: WifiTriggerLink = master
    channel: HatChannel = link
    assert {id(update), id(wifi), id(channel)} == {id(link)}
    assert link.capabilities == frozenset()  # not opened: the master's firmware is not known yet


async def test_a_canopen_master_streams(tmp_path: Path) -> None:
    async with microscope(tmp_path) as scope, linked(scope) as link:
        assert link.capabilities == {LinkCapability.STREAM}


async def test_a_legacy_master_relays_the_wifi_trigger(tmp_path: Path) -> None:
    async with legacy_microscope(tmp_path) as (_, link):
        assert link.capabilities == {LinkCapability.WIFI_TRIGGER}


def _imports(path: Path, package: str) -> set[str]:
    """Every ``uc2otad.links`` module ``path`` imports: top level, under TYPE_CHECKING, in functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from package import module
    return {name for name in found if name.startswith("uc2otad.links.")}


def test_the_links_package_has_no_import_circle() -> None:
    root = Path(uc2otad.links.__file__).parent
    modules = {f"uc2otad.links.{path.stem}": path for path in root.glob("*.py") if path.stem != "__init__"}
    graph = {name: _imports(path, "uc2otad.links") & modules.keys() for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])

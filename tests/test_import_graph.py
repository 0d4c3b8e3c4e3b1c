"""The package's imports form no circle: not between modules, not between rooms (issue 16).

Every import counts — at the top, under ``TYPE_CHECKING``, inside a function (the lazy imports that keep
idle memory low) — since each is a dependency a reader has to follow and a place where a change in one
module reaches the other. A room is a first-level package or module of ``uc2otad`` (``engine``,
``links``, ``settings``…). The graph is read from the source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import uc2otad

PACKAGE_DIR = Path(uc2otad.__file__).parent
PACKAGE = "uc2otad"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, name: str, modules: Mapping[str, Path]) -> Iterator[str]:
    """The package's modules that the module at ``path`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, up level - 1
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from uc2otad import timestamps" imports a module; "from uc2otad.errors import X" a name
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            found = target
            while found and found not in modules:  # "import uc2otad.links.frames" names a module
                found = found.rpartition(".")[0]
            if found.startswith(PACKAGE + ".") and found != name:
                yield found


def module_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: set(imported_modules(path, name, modules)) for name, path in modules.items()}


def room_of(module: str) -> str | None:
    """``uc2otad.engine.core`` → ``engine``; the package's own ``__init__`` is no room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycle_in(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (its nodes, the first repeated at the end), or None."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def test_the_reader_sees_every_kind_of_import() -> None:
    """The graph is only as good as its reading: lazy, typed and relative imports are all found."""
    graph = module_graph()
    assert "uc2otad.methods.usb.ports" in graph["uc2otad.engine.usb"]  # inside a function
    assert "uc2otad.engine.master" in graph["uc2otad.engine.planning"]  # under TYPE_CHECKING
    assert "uc2otad.errors" in graph["uc2otad.engine.core"]  # at the top
    assert any(graph.values()) and len(graph) > 100


def test_no_module_imports_itself_through_others() -> None:
    assert cycle_in(module_graph()) is None


def test_no_two_rooms_import_each_other() -> None:
    rooms: dict[str, set[str]] = {}
    for module, imported in module_graph().items():
        source = room_of(module)
        if source is None:
            continue
        targets = {target for target in map(room_of, imported) if target is not None and target != source}
        rooms.setdefault(source, set()).update(targets)
    assert cycle_in(rooms) is None

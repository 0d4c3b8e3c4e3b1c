"""How uc2otactl shows results: aligned tables for people, one JSON document with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Outcome:
    """A command's ``--json`` document with an exit code other than 0 (an update that failed, nothing
    to do); a command that returns a plain document exits 0."""

    document: Any
    exit_code: int


def print_json(document: Any, stream: TextIO = sys.stdout) -> None:
    json.dump(document, stream, indent=2, sort_keys=True)
    stream.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], stream: TextIO = sys.stdout) -> None:
    """Columns padded to their widest cell; an unknown value shows as "-"."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        stream.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)

"""How a benchmark ends: its figures as a table on the terminal and as JSON in a file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table


def report(path: Path, figures: Mapping[str, object], title: str,
           targets: Mapping[str, str] | None = None) -> None:
    """Print `figures` (with the `targets` named for some) and write them to `path`."""
    table = Table("figure", "value", *(["target"] if targets else []), title=title)
    for name, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        table.add_row(name, shown, *([targets.get(name, "")] if targets else []))
    Console().print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")

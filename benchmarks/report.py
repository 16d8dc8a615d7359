"""What every benchmark writes: the machine it ran on, and its results as JSON and as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path


def cpu_name() -> str:
    """The CPU model (Linux), so a table says which machine its numbers come from."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU")


def write_results(out: str | Path, name: str, payload: dict, table: str) -> None:
    """``<out>/<name>.json`` (everything measured) and ``<out>/<name>.md`` (the table); prints the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)

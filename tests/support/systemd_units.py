"""The systemd units shipped in systemd/, read as systemd reads them (for the unit and integration tests)."""

from __future__ import annotations

from pathlib import Path

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = "/opt/backupctl/bin/backupctl"  # the path the units name
JOBS = ("backup", "expire", "verify", "drill")  # each a templated service and timer


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections

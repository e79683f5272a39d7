"""Pins: a backup that must outlive every retention rule (a legal hold, the last backup before an upgrade).

A pin is its own small object, ``<source>/pins/<id>.json``, written and removed with plain puts and deletes:
manifests are write-once and self-checksummed, so a pin never touches one. Pins have their own folder so that
`list` finds them with one listing of a few keys, not a second listing of every backup's objects.

Pinning takes the source's expire lease for the instant it writes: expire plans from the pins it reads under
that lease, so a pin can never land between expire's last look and its removal of the backup (it fails with
the lease message instead, and works once expire has finished). Unpinning needs no lease: a pin that expire
still saw only keeps a backup one run longer.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso
from backupctl.repo.lease import LeaseHeld
from backupctl.repo.repository import Repository
from backupctl.storage import Storage


@dataclass(frozen=True)
class Pin:
    """Who pinned a backup, when and why."""

    backup_id: str
    reason: str
    by: str
    pinned_at: str

    def describe(self) -> str:
        return f"{self.reason} ({self.by}, {self.pinned_at})"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "pinned_at": self.pinned_at}


def _parse(key: str, data: bytes) -> Pin:
    try:
        doc = json.loads(data)
        return Pin(doc["backup_id"], doc["reason"], doc["by"], doc["pinned_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{key} is not a backupctl pin: remove it or pin the backup again") from exc


def read_pins(storage: Storage, source: str) -> dict[str, Pin]:
    """Every pin of a source, by backup id (one listing, one small GET per pin)."""
    pins = {}
    for info in storage.list(layout.pins_prefix(source)):
        pin = _parse(info.key, storage.get_bytes(info.key))
        pins[pin.backup_id] = pin
    return pins


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def pin(repo: Repository, manifest: Manifest, reason: str) -> Pin:
    """Pin (or re-pin with a new reason) one backup, under the source's expire lease."""
    if not reason.strip():
        raise ConfigError("--reason must say why the backup is pinned (it is shown by `list` and `expire`)")
    record = Pin(manifest.id, reason.strip(), _who(), iso(datetime.now(UTC)))
    try:
        with repo.exclusive_lease(manifest.source, "expire", f"pin {manifest.id}"):
            if repo.storage.head(manifest.key) is None:
                raise BackupctlError(f"backup {manifest.id} was removed by expire before it could be pinned")
            repo.storage.put(layout.pin_key(manifest.source, manifest.id),
                             json.dumps({"backup_id": record.backup_id, **record.to_json()}, indent=1).encode())
    except LeaseHeld as exc:
        raise LeaseHeld(f"cannot pin {manifest.id} now: {exc}; pin it again when that run has finished "
                        "(an expire that is running decides from the pins it read when it started)") from exc
    return record


def unpin(storage: Storage, manifest: Manifest) -> bool:
    """Remove a pin; False when the backup was not pinned."""
    key = layout.pin_key(manifest.source, manifest.id)
    if storage.head(key) is None:
        return False
    storage.delete([key])
    return True

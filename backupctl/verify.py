"""The verify verb: read every object of a backup back and prove it matches its manifest.

With the identity (or an unencrypted repository) each object is decrypted and decompressed too, which
checks age's authentication tags and the compressed frame's checksum: a full proof short of a restore.
A host with only the public key checks sizes and sha256 of the stored bytes, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from backupctl.catalog import Manifest, open_details
from backupctl.errors import IntegrityError, ObjectNotFound
from backupctl.log import get_logger
from backupctl.repository import Repository

log = get_logger(__name__)


@dataclass
class VerifyResult:
    """The outcome for one backup (or one unreadable manifest)."""

    id: str
    source: str
    mode: str  # "full": decoded; "stored": checksums of stored bytes only
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "ok": self.ok,
            "mode": self.mode,
            "objects": self.objects,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "problems": self.problems,
        }


def verify_backup(repo: Repository, manifest: Manifest) -> VerifyResult:
    """Check every object; damage is collected, not raised, so one report covers the whole backup."""
    decode = manifest.encryption is None or repo.pipeline.can_decrypt()
    result = VerifyResult(manifest.id, manifest.source, "full" if decode else "stored")
    clock = time.monotonic()
    log.info("verify started", backup_id=manifest.id, mode=result.mode)
    if decode:
        open_details(manifest, repo.pipeline)  # proves the sealed description opens, too
    for obj in manifest.objects:
        try:
            repo.pipeline.check(obj, decode=decode)
        except (IntegrityError, ObjectNotFound) as exc:
            result.problems.append(str(exc))
        result.objects += 1
        result.bytes += obj.stored_size
    result.seconds = time.monotonic() - clock
    log.info(
        "verify finished",
        backup_id=manifest.id,
        ok=result.ok,
        objects=result.objects,
        bytes=result.bytes,
        seconds=round(result.seconds, 3),
    )
    return result


def verify_all(repo: Repository, source: str | None = None) -> list[VerifyResult]:
    """Every backup in the repository (or one source), damaged manifests included as failures."""
    manifests, damaged = repo.catalog.scan(source)
    results = [verify_backup(repo, m) for m in manifests]
    for key, problem in damaged.items():
        backup_id = key.rsplit("/", 2)[-2]
        results.append(VerifyResult(backup_id, key.split("/", 1)[0], "manifest", problems=[problem]))
    return results

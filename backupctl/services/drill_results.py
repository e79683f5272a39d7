"""Drill results: their typed form (``DrillResult``, whose JSON docs/json-output.md describes) and their
records in the repository, ``<source>/drills/<id>.json``, read back for `drill list`, `drill show`, `status`
and the metrics.

An encrypted repository keeps the checks' details and the assertions' names sealed (they name databases
and tables); ``open_result`` opens them again with the identity.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError, ObjectNotFound
from backupctl.core.log import get_logger
from backupctl.repo import layout
from backupctl.repo.catalog import Catalog
from backupctl.repo.pipeline import Pipeline
from backupctl.repo.repository import Repository
from backupctl.services.pitr import Target
from backupctl.storage import Storage

log = get_logger(__name__)

RESULT_FORMAT = "backupctl-drill"
RESULT_VERSION = 1
_ID_RE = re.compile(r"^\d{8}T\d{9}Z-D-[a-z0-9]{3}$")


# --- the result (its JSON is documented in docs/json-output.md) ----------------------------------------


@dataclass(frozen=True)
class DrillCheck:
    """One check's verdict: "passed", "failed" or "skipped" (with why it did not run)."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Reached:
    """Where recovery of a physical drill stopped, and the timeline the copy was promoted to."""

    lsn: str
    time: str | None  # the last replayed transaction's commit time; None when none was replayed
    timeline: int
    promoted_timeline: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RtoParts:
    """Seconds spent in each part: the first four add up to the RTO; ``checks`` comes after it."""

    plan: float
    download: float
    extract: float
    wal_replay: float
    checks: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DrillResult:
    """A drill's outcome, as `drill run` prints it and ``<source>/drills/<id>.json`` records it."""

    id: str
    source: str
    backup_id: str | None
    backup_type: str | None
    kind: str
    status: str  # "passed" or "failed"
    started_at: str
    finished_at: str
    duration_seconds: float
    target: Target
    reached: Reached | None
    rto_seconds: float | None  # None when the copy never came up
    rto_parts: RtoParts
    wal_segments_replayed: int
    checks: tuple[DrillCheck, ...]
    error: str | None
    kept: str | None  # the scratch directory kept with --keep
    host: str
    tool_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "id": self.id,
            "source": self.source,
            "backup_id": self.backup_id,
            "backup_type": self.backup_type,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds,
            "target": {"kind": self.target.kind, "value": self.target.value},
            "reached": self.reached.to_json() if self.reached else None,
            "rto_seconds": self.rto_seconds,
            "rto_parts": self.rto_parts.to_json(),
            "wal_segments_replayed": self.wal_segments_replayed,
            "checks": [c.to_json() for c in self.checks],
            "error": self.error,
            "kept": self.kept,
            "host": self.host,
            "tool_version": self.tool_version,
        }


# --- results in the repository -------------------------------------------------------------------------


def is_drill_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def record_result(repo: Repository, result: DrillResult) -> None:
    """Store the result (the private part sealed when the repository is encrypted)."""
    document = result.to_json()
    if repo.pipeline.encrypted:
        document = _sealed(document, repo.pipeline)
    repo.storage.put(layout.drill_key(result.source, result.id), json.dumps(document, indent=1).encode())


def _sealed(result: dict[str, Any], pipeline: Pipeline) -> dict[str, Any]:
    """Checks' details and assertions' names name databases and tables: only their verdicts stay readable."""
    private = {"checks": result["checks"], "error": result["error"]}
    public_names = [c["name"] if not c["name"].startswith("assertion: ") else f"assertion {i}"
                    for i, c in enumerate(result["checks"], 1)]
    failed = [name for name, c in zip(public_names, result["checks"], strict=True) if c["status"] == "failed"]
    return {
        **result,
        "checks": [{"name": name, "status": c["status"], "detail": "sealed"}
                   for name, c in zip(public_names, result["checks"], strict=True)],
        "error": (f"{', '.join(failed) or 'the drill'} failed (details sealed: read them with the identity)"
                  if result["error"] else None),
        "encryption": pipeline.encryption_record(),
        "sealed": base64.b64encode(pipeline.seal(json.dumps(private).encode())).decode(),
    }


def open_result(document: dict[str, Any], pipeline: Pipeline | None) -> dict[str, Any]:
    """A stored result, its sealed part opened when ``pipeline`` holds the identity."""
    if "sealed" not in document or pipeline is None or not pipeline.can_decrypt():
        return document
    pipeline.check_recipient((document.get("encryption") or {}).get("recipients", []), f"drill {document['id']}")
    private = json.loads(pipeline.unseal(base64.b64decode(document["sealed"])))
    return {**{k: v for k, v in document.items() if k not in ("sealed", "encryption")}, **private}


def _read(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        document = json.loads(storage.get_bytes(key))
    except ObjectNotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("damaged drill result skipped", key=key)
        return None
    if not isinstance(document, dict) or document.get("format") != RESULT_FORMAT:
        log.warning("foreign object under drills/ skipped", key=key)
        return None
    return document


def list_drills(storage: Storage, source: str | None = None, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """Every stored drill result (of one source, or all), newest first; sealed parts opened with ``pipeline``."""
    sources = [source] if source else Catalog(storage).sources()
    keys = [info.key for name in sources for info in storage.list(layout.drills_prefix(name))
            if layout.is_record_key(info.key)]
    documents = [d for d in (_read(storage, key) for key in keys) if d is not None]
    documents.sort(key=lambda d: (d.get("started_at") or "", d.get("id") or ""), reverse=True)
    return [open_result(d, pipeline) for d in documents]


def latest_drill(storage: Storage, source: str) -> dict[str, Any] | None:
    """The newest drill of ``source`` (for `status`, `check` and the metrics), or None."""
    drills = list_drills(storage, source)
    return drills[0] if drills else None


def find_drill(storage: Storage, drill_id: str, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """A drill result by id alone (drill ids are unique in the repository, like backup ids)."""
    if not is_drill_id(drill_id):
        raise ConfigError(f"{drill_id!r} is not a drill id (they look like 20261125T021500123Z-D-k3x; see "
                          "`backupctl drill list`)")
    for name in Catalog(storage).sources():
        document = _read(storage, layout.drill_key(name, drill_id))
        if document is not None:
            return open_result(document, pipeline)
    raise BackupctlError(f"no drill {drill_id} in the repository (see `backupctl drill list`)")


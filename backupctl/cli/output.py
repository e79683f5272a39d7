"""Results on stdout: rich tables for people, stable JSON for machines.

Every listing's JSON is a list of objects with an ``id``; tables are only a view of the same data.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def console() -> Console:
    """Stdout console; when piped, wide enough that ids and keys never wrap mid-word."""
    width = None if sys.stdout.isatty() else 250
    return Console(file=sys.stdout, no_color="NO_COLOR" in os.environ, width=width)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """A plain table; on a non-terminal rich prints it without colour or box art surprises."""
    view = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*row)
    console().print(view)


def backups_table(summaries: list[dict[str, Any]]) -> None:
    if not summaries:
        console().print("no backups")
        return
    table(
        None,
        ["ID", "SOURCE", "TYPE", "FINISHED", "DURATION", "SIZE", "STORED", "ENCRYPTED", "PINNED"],
        [
            [
                s["id"],
                s["source"],
                s["type"],
                s["finished_at"],
                f"{s['duration_seconds']:.1f}s",
                human_size(s["size"]),
                human_size(s["stored_size"]),
                "yes" if s["encrypted"] else "no",
                s["pinned"]["reason"] if s.get("pinned") else "",
            ]
            for s in summaries
        ],
    )


def manifest_view(doc: dict[str, Any]) -> None:
    """``show`` for people: the facts, the objects and, when readable, what the data holds."""
    out = console()
    for key in ("id", "source", "kind", "type", "parent", "started_at", "finished_at", "host",
                "tool_version"):
        out.print(f"{key + ':':<14}{doc.get(key)}")
    totals = doc["totals"]
    out.print(f"{'size:':<14}{human_size(totals['size'])} ({human_size(totals['stored_size'])} stored)")
    enc = doc.get("encryption")
    out.print(f"{'encryption:':<14}{'age to ' + ', '.join(enc['recipients']) if enc else 'none'}")
    if doc.get("labels"):
        out.print(f"{'labels:':<14}{', '.join(f'{k}={v}' for k, v in doc['labels'].items())}")
    table(
        "objects",
        ["KEY", "SIZE", "STORED", "COMPRESSION", "SHA256"],
        [
            [o["key"], human_size(o["size"]), human_size(o["stored_size"]), o["compression"],
             o["sha256"][:16]]
            for o in doc["objects"]
        ],
    )
    details = doc.get("details")
    if details is None:
        out.print("details:      sealed (set encryption.identity_file to read them)")
        return
    extra = doc.get("extra", {})
    if doc["type"] in ("full", "incr"):
        out.print(f"PostgreSQL {extra['pg_major']}, timeline {extra['timeline']}, WAL {extra['start_lsn']} "
                  f"({extra['start_wal']}) to {extra['stop_lsn']} ({extra['stop_wal']}), system identifier "
                  f"{extra['system_identifier']}")
        table("databases", ["DATABASE", "SIZE"],
              [[name, human_size(size)] for name, size in sorted(details["databases"].items())])
    if doc["type"] == "logical":
        out.print(f"server {details['server_version']}, dumped with pg_dump {details['pg_dump_version']}")
        table("databases", ["DATABASE", "SIZE", "ENCODING", "LOCALE", "TABLES", "ROWS"], [
            [name, human_size(d["size"]), d["encoding"], d["locale"] or d["collate"], str(len(d["tables"])),
             str(sum(d["tables"].values()))]
            for name, d in sorted(details["databases"].items())
        ])
    if "tables" in details:
        table("tables", ["TABLE", "ROWS"], [[n, str(c)] for n, c in sorted(details["tables"].items())])
    if "page_size" in details:
        out.print(
            f"pages: {details['page_count']} x {details['page_size']} B, journal_mode "
            f"{details['journal_mode']}, schema sha256 {details['schema_sha256'][:16]}"
        )


def verify_table(results: list[dict[str, Any]]) -> None:
    table(
        None,
        ["ID", "SOURCE", "RESULT", "MODE", "OBJECTS", "BYTES", "SECONDS", "PROBLEM"],
        [
            [
                r["id"],
                r["source"],
                "ok" if r["ok"] else "DAMAGED",
                r["mode"],
                str(r["objects"]),
                human_size(r["bytes"]),
                f"{r['seconds']:.2f}",
                "; ".join(r["problems"]),
            ]
            for r in results
        ],
    )


def plan_view(plan: dict[str, Any]) -> None:
    """A restore plan, as a DBA reads it before anything is downloaded."""
    out = console()
    target = plan["target"]
    out.print(f"source:       {plan['source']}")
    out.print(f"backup:       {plan['backup']} ({plan['backup_type']}, finished {plan['backup_finished_at']}, "
              f"WAL {plan['backup_start_lsn']} to {plan['backup_stop_lsn']})")
    out.print(f"target:       {target['kind']}{' ' + str(target['value']) if target['value'] else ''}, "
              f"action {target['action']}")
    path = " -> ".join(f"{p['timeline']}" + (f" (until {p['until']})" if p["until"] else "")
                       for p in plan["timeline_path"])
    out.print(f"timeline:     {plan['timeline']} (path {path})")
    out.print(f"WAL:          {plan['wal_segments']} segments, {plan['wal_first']} to {plan['wal_last']}")
    out.print(f"download:     {human_size(plan['download_bytes'])}")
    if plan.get("archiving"):
        out.print(f"archiving:    {plan['archiving']['state']} ({plan['archiving']['reason']})")
    for note in plan["notes"]:
        out.print(f"note:         {note}")

"""Webhooks: a JSON event per finished job, POSTed to each configured URL.

Failures are always sent, successes only to the hooks that ask (``on_success``). Delivery is best effort
and bounded by each hook's timeout: a failing webhook is logged and never fails, nor holds up for long,
the job it reports on.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from backupctl import __version__
from backupctl.core.config import Webhook
from backupctl.core.log import get_logger

log = get_logger(__name__)


def job_event(*, job_id: str, source: str, job: str, ok: bool, error: str | None, duration: float,
              started_at: str, finished_at: str, exit_code: int | None, result: Any = None) -> dict[str, Any]:
    """The event's stable shape (receivers key on these names)."""
    return {
        "event": "backupctl.job",
        "id": job_id,
        "source": source,
        "job": job,
        "status": "success" if ok else "failure",
        "error": error,
        "duration_seconds": round(duration, 3),
        "started_at": started_at,
        "finished_at": finished_at,
        "exit_code": exit_code,
        "host": socket.gethostname(),
        "result": result,
        "backupctl_version": __version__,
    }


def send(webhooks: list[Webhook], event: dict[str, Any]) -> int:
    """POST ``event`` to every hook that wants it; returns how many accepted it (2xx)."""
    body = json.dumps(event).encode()
    delivered = 0
    for hook in webhooks:
        if event["status"] == "success" and not hook.on_success:
            continue
        request = urllib.request.Request(hook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"backupctl/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout) as response:
                response.read(65536)
            delivered += 1
        except urllib.error.HTTPError as exc:
            log.warning("webhook refused the event", url=_redacted(hook.url), http_status=exc.code, job_id=event["id"])
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            log.warning("webhook not delivered", url=_redacted(hook.url), error=str(reason), job_id=event["id"])
    return delivered


def _redacted(url: str) -> str:
    """Webhook URLs often carry a token in the path or query (Slack, ntfy, PagerDuty): log the host only."""
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.hostname}{':' + str(parsed.port) if parsed.port else ''}/..."

"""Named fault points, for tests only: ``hit(name)`` SIGKILLs this process when ``BACKUPCTL_FAULT_POINT`` is ``name``.

The kill -9 matrix (tests/test_faults_kill.py) uses them to die at the exact moments a random delay rarely
hits: between a backup's data and its manifest, right after the manifest, between the removals of expire and
gc, in the middle of a restore's extraction. Nothing in backupctl sets the variable; unset, a call costs one
environment lookup. The points are listed where they are called (grep ``faultpoints.hit``).
"""

from __future__ import annotations

import os
import signal


def hit(name: str) -> None:
    """Die here, as by ``kill -9``, when the test asked for this point; otherwise do nothing."""
    if os.environ.get("BACKUPCTL_FAULT_POINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

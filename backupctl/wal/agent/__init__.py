"""The WAL agent: archive_command / restore_command's fast path and the resident pusher behind it.

``settings`` (the config read with tomllib alone), ``protocol`` (framing and the spool's file names) and
``client`` (one wal-push or wal-fetch call) import only the standard library, because PostgreSQL starts
a process per segment; ``daemon`` (the resident pusher) and ``logfile`` run with the venv loaded.
``backupctl.walpusher`` is the entry point users' postgresql.conf names. This ``__init__`` stays empty
of imports, as does ``backupctl.wal``'s: importing the fast path must not import the archive.
"""

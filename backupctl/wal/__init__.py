"""WAL archiving: one concept per module, from PostgreSQL's arithmetic up to the resident pusher.

- ``names``: WAL file names, LSNs, timeline histories (pure: the only home of this arithmetic)
- ``listing``: the archive's keys (spelled by ``repo.layout``) read back as ``ArchivedWal`` objects
- ``streams``: the systems (history epochs) a source has, as the repository records them
- ``identity``: a segment's page header and the system it must belong to (``IdentityGuard``)
- ``opening``: the repository opened for WAL (bounded requests, one-shot zstd)
- ``push``, ``fetch``: one file into the archive, and back out of it
- ``verify``: ``wal status`` and ``wal verify``; ``check``: ``wal check``
- ``conf``: the postgresql.conf lines; ``epochs``: ``wal new-epoch``; ``timelines``: which is production's
- ``agent``: the stdlib-only fast path (``backupctl.walpusher``) and the resident pusher

This package's ``__init__`` stays empty: the archive_command fast path imports below it.
"""

"""The command line: one module per verb family; parsing and rendering only, the work is in ``services``.

- ``app``: the ``backupctl`` group, which adds every command (``add_command``), and ``main`` (exit codes)
- ``backup`` (backup, list, show, verify), ``restore``, ``wal``, ``retention`` (expire, pin, unpin),
  ``repo`` (init, repo gc), ``keys`` (keygen, repo recipients), ``ops`` (status, check, metrics),
  ``scheduler``, ``drill``: plain click commands, each importable and testable alone
- ``common``: the group's State, the shared options, and ``act_as`` (whose OS user a command is)
- ``output``: a writer per format (tables for people, JSON for programs); ``argv``: the command word

Imports point from ``app`` to the command modules to ``common``, never back. This ``__init__`` imports
nothing: the console script's fast path loads ``cli.argv`` through it.
"""
